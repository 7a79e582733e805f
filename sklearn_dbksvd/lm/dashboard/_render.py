"""HTML of the dashboard: the index of latents and one page per latent.

Pages are plain HTML with a local stylesheet; the index sorts and filters
with a local script. Nothing is fetched from a network, and nothing is
fetched at all by script (browsers refuse that for ``file://`` pages): the
index's table is inline JSON.
"""

import functools
import html
import json
import math

from .._latents import MINUS

#: Shading levels of a token's code, per sign (CSS classes ``p1``..``p10``,
#: ``n1``..``n10``).
N_LEVELS = 10

_VISIBLE = str.maketrans({"\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"})


def token_text(text, alone=False):
    """A token as shown: line breaks and tabs made visible, never empty.

    ``alone``: the token is shown out of context (in a list), where its
    spaces are made visible too (``\u2423``).
    """
    text = text.translate(_VISIBLE)
    if alone:
        text = text.replace(" ", "\u2423")
    return text if text else "\u2205"


@functools.lru_cache(maxsize=2**16)
def _markup(text):
    """HTML of a token's text in context (cached: tokens repeat)."""
    return html.escape(token_text(text))


def shade_class(code, scale):
    """CSS class of a token whose code (for the atom shown) is ``code``.

    ``p<level>`` for positive and ``n<level>`` for negative codes, the level
    ``1..N_LEVELS`` proportional to ``|code| / scale``; ``z`` for a zero code
    and ``x`` for a position that has no harvested row (a special token).
    """
    if code is None or math.isnan(code):
        return "x"
    if code == 0 or scale <= 0:
        return "z"
    level = min(N_LEVELS, max(1, math.ceil(N_LEVELS * abs(code) / scale)))
    return f"{'p' if code > 0 else 'n'}{level}"


def _fmt(value, digits=3):
    return f"{value:.{digits}g}"


def _page(title, body, root, scripts=()):
    script_tags = "".join(
        f'<script src="{root}{html.escape(src)}"></script>' for src in scripts
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        f'<link rel="stylesheet" href="{root}dashboard.css">'
        f"</head><body>{body}{script_tags}</body></html>\n"
    )


def render_context(example, scale, decode, sign=1):
    """One example as a line of shaded tokens.

    Parameters
    ----------
    example : dict
        ``value`` (the latent's activation at the centre), ``tokens`` (token
        ids of the window, -1 outside the document) and ``codes`` (the
        latent's activation at each, NaN where no row was harvested).
    scale : float
        Activation shaded at full strength.
    decode : callable
        Token id to text.
    sign : {1, -1}, default=1
        The sign of the atom's codes that the latent carries: its colour.
    """
    # Plain Python numbers: a page has a few thousand tokens to shade.
    tokens, codes = example["tokens"].tolist(), example["codes"].tolist()
    centre = len(tokens) // 2
    spans = []
    for slot, (token, code) in enumerate(zip(tokens, codes, strict=True)):
        if token < 0:
            continue
        if code == 0:
            cls, title = "z", "0"
        elif math.isnan(code):
            cls, title = "x", "not harvested"
        else:
            cls, title = shade_class(sign * code, scale), _fmt(code, 4)
        if slot == centre:
            cls += " c"
        spans.append(
            f'<span class="t {cls}" title="{title}">{_markup(decode(token))}</span>'
        )
    value = float(example["value"])
    colour = "pos" if sign * value > 0 else "neg"
    return (
        f'<div class="ex"><span class="v {colour}">{_fmt(value, 4)}</span>'
        f'<span class="ctx">{"".join(spans)}</span></div>'
    )


def histogram_svg(counts, edges, width=640, height=170, sign=1):
    """Inline SVG bar chart of a histogram of activations.

    Bars take the colour of the token shading (``sign`` -1: the colour of
    negative codes); the axis is labelled at both ends and at 0.
    """
    if not len(counts):
        return '<p class="muted">Never active: a dead latent.</p>'
    pad_left, pad_bottom, pad_top = 50, 22, 8
    plot_w, plot_h = width - pad_left - 10, height - pad_bottom - pad_top
    lo, hi = float(edges[0]), float(edges[-1])
    span = hi - lo if hi > lo else 1.0
    peak = max(int(max(counts)), 1)

    def x(value):
        return pad_left + (value - lo) / span * plot_w

    bars = []
    for count, left, right in zip(counts, edges[:-1], edges[1:], strict=True):
        if not count:
            continue
        h = plot_h * int(count) / peak
        cls = "hp" if sign * (left + right) > 0 else "hn"
        bars.append(
            f'<rect class="{cls}" x="{x(left):.1f}" y="{pad_top + plot_h - h:.1f}" '
            f'width="{max(x(right) - x(left) - 0.5, 0.5):.1f}" height="{h:.1f}">'
            f"<title>[{_fmt(left)}, {_fmt(right)}): {int(count)}</title></rect>"
        )
    base = pad_top + plot_h
    ticks = [(lo, "start"), (hi, "end")]
    if lo < 0 < hi:
        ticks.append((0.0, "middle"))
    labels = "".join(
        f'<text x="{x(v):.1f}" y="{height - 6}" text-anchor="{anchor}">{_fmt(v)}</text>'
        for v, anchor in ticks
    )
    return (
        f'<svg class="hist" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        'aria-label="histogram of the nonzero codes">'
        f'<line x1="{pad_left}" y1="{base}" x2="{width - 10}" y2="{base}" '
        'class="axis"/>'
        f'<text x="{pad_left - 4}" y="{pad_top + 10}" text-anchor="end">{peak}</text>'
        f'<text x="{pad_left - 4}" y="{base}" text-anchor="end">0</text>'
        f"{''.join(bars)}{labels}</svg>"
    )


def _token_table(title, token_ids, logits, decode, cls):
    rows = "".join(
        f'<tr><td class="tok {cls}">'
        f"{html.escape(token_text(decode(int(t)), alone=True))}</td>"
        f"<td>{_fmt(float(v), 4)}</td></tr>"
        for t, v in zip(token_ids, logits, strict=True)
    )
    return (
        f'<div class="logits"><h3>{title}</h3><table class="small">'
        f"<tr><th>token</th><th>logit</th></tr>{rows}</table></div>"
    )


def _link(latents, latent, prefix="", rel=None):
    """A link from a latent page to the page of ``latent``."""
    target = latents.file(latent).split("/", 1)[1]
    rel = f' rel="{rel}"' if rel else ""
    return (
        f'<a href="{html.escape(target)}"{rel}>{prefix}'
        f"latent {html.escape(latents.label(latent))}</a>"
    )


def render_latent_page(latent, view, decode, latents, meta):
    """The page of one latent.

    Parameters
    ----------
    latent : int
        Index of the latent (``m + i`` for the negative codes of atom ``i``).
    view : dict
        ``count``, ``frequency``, ``mean`` (mean activation over its uses),
        ``max_cos``, ``nearest`` (latent), ``top`` (examples, strongest
        first), ``quantiles`` (list of ``(label, examples)``), ``hist``
        (``(counts, edges)``) and, when a model was given, ``effects``
        (``promoted``, ``suppressed`` token ids and their
        ``promoted_logits``, ``suppressed_logits``).
    decode : callable
        Token id to text.
    latents : Latents
        The latents of the dictionary: names, pages, signs.
    meta : dict
        ``title`` of the site and ``norm`` (the final norm folded into the
        logit effects).
    """
    top = view["top"]
    sign = latents.sign(latent)
    label = latents.label(latent)
    atom = latents.atom(latent)
    scale = max((abs(float(e["value"])) for e in top), default=0.0)
    where = latents.position(latent)
    nav = ['<a href="../index.html">index</a>']
    if where > 0:
        nav.append(_link(latents, latents.at(where - 1), "&larr; ", "prev"))
    if where + 1 < latents.n_latents:
        nav.append(_link(latents, latents.at(where + 1), "", "next") + " &rarr;")
    twin = latents.twin(latent)
    nearest = view["nearest"]
    near = _link(latents, nearest) if nearest >= 0 else "none"
    if latents.signed:
        which = "positive" if sign > 0 else "negative"
        about = (
            f"The {which} codes of atom {atom} (latent index {latent} of the "
            f"[D; {MINUS}D] export), along "
            + ("d" if sign > 0 else f"{MINUS}d")
            + f"<sub>{atom}</sub>; its activation is |code|. The other sign: "
            + _link(latents, twin)
            + "."
        )
    else:
        about = f"Atom {atom}: its codes are nonnegative, one latent per atom."
    stats = (
        '<table class="stats">'
        f"<tr><th>uses</th><td>{view['count']}</td></tr>"
        f"<tr><th>frequency</th><td>{_fmt(view['frequency'], 4)}</td></tr>"
        f"<tr><th>mean activation</th><td>{_fmt(view['mean'], 4)}</td></tr>"
        f"<tr><th>max cos to another latent</th><td>{_fmt(view['max_cos'], 3)}"
        f" ({near})</td></tr></table>"
    )
    parts = [
        f"<nav>{' | '.join(nav)}</nav>",
        f"<h1>Latent {html.escape(label)}</h1>",
        f'<p class="muted">{html.escape(meta["title"])}</p>',
        f"<p>{about}</p>",
        stats,
        "<h2>Histogram of activations</h2>",
        histogram_svg(*view["hist"], sign=sign),
    ]
    effects = view.get("effects")
    if effects is not None:
        direction = (
            "d" if sign > 0 else f"{MINUS}d"
        ) + f"<sub>{atom}</sub>"
        parts.append(
            "<h2>Logit effects</h2>"
            '<p class="muted">Tokens whose logits this latent raises and lowers '
            "when it fires, added to the residual stream along its direction "
            f"{direction}: <code>W_U @ {direction}</code>, through the final "
            f"norm ({html.escape(meta['norm'])}).</p>"
            '<div class="row">'
            + _token_table(
                "promoted",
                effects["promoted"],
                effects["promoted_logits"],
                decode,
                "pos",
            )
            + _token_table(
                "suppressed",
                effects["suppressed"],
                effects["suppressed_logits"],
                decode,
                "neg",
            )
            + "</div>"
        )
    colour = "p8" if sign > 0 else "n8"
    legend = (
        "<p class=\"legend\">Each token is shaded by this latent's activation "
        f'there: <span class="t {colour}">active</span> '
        '<span class="t x">not harvested</span>; the centre token is outlined. '
        "Hover a token for its activation.</p>"
    )
    parts.append("<h2>Top activations</h2>" + legend)
    if top:
        parts.append('<div class="examples" id="top">')
        parts.extend(render_context(e, scale, decode, sign) for e in top)
        parts.append("</div>")
    else:
        parts.append('<p class="muted">Never used.</p>')
    if view["quantiles"]:
        parts.append(
            "<h2>Examples by activation quantile</h2>"
            '<p class="muted">From a uniform sample of the uses of this latent, '
            "sorted by activation and cut into bands.</p>"
        )
        for band, examples in view["quantiles"]:
            parts.append(f'<h3>{html.escape(band)}</h3><div class="examples">')
            parts.extend(render_context(e, scale, decode, sign) for e in examples)
            parts.append("</div>")
    return _page(f"Latent {label} - {meta['title']}", "".join(parts), "../")


def _json_script(element_id, data):
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    # "</script" would end the element early and "<!--" change how it is
    # parsed: no "<" at all, JSON reads "\\u003c" back as "<".
    text = text.replace("<", "\\u003c")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def render_index(rows, meta):
    """The index page: a sortable, filterable table of every latent.

    Parameters
    ----------
    rows : list of dict
        One per latent: ``latent`` (index), ``order`` (its place atom by
        atom: ``0+, 0-, 1+, ...``), ``label`` (``"12+"``), ``page`` (path of
        its page), ``count``, ``frequency``, ``mean``, ``max_cos``,
        ``nearest``, ``top_tokens`` (text of the tokens of its strongest
        examples) and ``promoted`` (text, may be empty).
    meta : dict
        ``title``, ``summary`` (lines about the dictionary and the data),
        ``has_effects`` and ``first_page`` (the page linked without script).
    """
    summary = "".join(f"<li>{html.escape(line)}</li>" for line in meta["summary"])
    body = (
        f"<h1>{html.escape(meta['title'])}</h1>"
        f'<ul class="summary">{summary}</ul>'
        '<div class="controls">'
        '<label>tokens contain <input id="filter" type="search" '
        'placeholder="e.g. the"></label> '
        '<label>frequency &ge; <input id="minfreq" type="number" min="0" '
        'step="any" value="0"></label> '
        '<label><input id="hidedead" type="checkbox"> hide unused latents</label> '
        '<span id="shown"></span></div>'
        '<table id="latents" class="index"><thead><tr>'
        '<th data-key="order">latent</th>'
        '<th data-key="frequency">frequency</th>'
        '<th data-key="mean">mean act.</th>'
        '<th data-key="max_cos">max cos</th>'
        '<th data-key="top_tokens">top tokens</th>'
        + ('<th data-key="promoted">promotes</th>' if meta["has_effects"] else "")
        + "</tr></thead><tbody></tbody></table>"
        '<div class="pager"><button id="prev">&larr;</button> '
        '<span id="page"></span> <button id="next">&rarr;</button></div>'
        "<noscript><p>The table needs JavaScript; the latent pages do not: "
        f'<a href="{html.escape(meta["first_page"])}">the first latent</a>.</p>'
        "</noscript>"
        + _json_script(
            "latent-data", {"rows": rows, "has_effects": meta["has_effects"]}
        )
    )
    return _page(meta["title"], body, "", scripts=("index.js",))
