"""HTML of the dashboard: the index of atoms and one page per atom.

Pages are plain HTML with a local stylesheet; the index sorts and filters
with a local script. Nothing is fetched from a network, and nothing is
fetched at all by script (browsers refuse that for ``file://`` pages): the
index's table is inline JSON.
"""

import html
import json
import math

#: Shading levels of a token's code, per sign (CSS classes ``p1``..``p10``,
#: ``n1``..``n10``).
N_LEVELS = 10

_VISIBLE = str.maketrans({"\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"})


def atom_file(atom):
    """Path of the page of ``atom``, relative to the site's root."""
    return f"atoms/{atom:05d}.html"


def token_text(text, alone=False):
    """A token as shown: line breaks and tabs made visible, never empty.

    ``alone``: the token is shown out of context (in a list), where its
    spaces are made visible too (``\u2423``).
    """
    text = text.translate(_VISIBLE)
    if alone:
        text = text.replace(" ", "\u2423")
    return text if text else "\u2205"


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


def render_context(example, scale, decode):
    """One example as a line of shaded tokens.

    Parameters
    ----------
    example : dict
        ``value`` (the code at the centre), ``tokens`` (token ids of the
        window, -1 outside the document) and ``codes`` (the atom's code at
        each, NaN where no row was harvested).
    scale : float
        Code shaded at full strength.
    decode : callable
        Token id to text.
    """
    tokens, codes = example["tokens"], example["codes"]
    centre = len(tokens) // 2
    spans = []
    for slot, (token, code) in enumerate(zip(tokens, codes, strict=True)):
        if token < 0:
            continue
        code = float(code)
        cls = shade_class(code, scale)
        if slot == centre:
            cls += " c"
        title = "not harvested" if math.isnan(code) else _fmt(code, 4)
        spans.append(
            f'<span class="t {cls}" title="{title}">'
            f"{html.escape(token_text(decode(int(token))))}</span>"
        )
    value = float(example["value"])
    sign = "pos" if value > 0 else "neg"
    return (
        f'<div class="ex"><span class="v {sign}">{_fmt(value, 4)}</span>'
        f'<span class="ctx">{"".join(spans)}</span></div>'
    )


def histogram_svg(counts, edges, width=640, height=170):
    """Inline SVG bar chart of a histogram of codes.

    Bars of positive codes and of negative codes take the colours of the
    token shading; the axis is labelled at both ends and at 0.
    """
    if not len(counts):
        return '<p class="muted">No nonzero code: a dead atom.</p>'
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
        cls = "hp" if left + right > 0 else "hn"
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


def render_atom_page(atom, view, decode, n_components, meta):
    """The page of one atom.

    Parameters
    ----------
    atom : int
    view : dict
        ``count``, ``frequency``, ``mean_abs``, ``max_abs_cos``, ``nearest``,
        ``top`` (examples, strongest first), ``quantiles`` (list of
        ``(label, examples)``), ``hist`` (``(counts, edges)``) and, when a
        model was given, ``effects`` (``promoted``, ``suppressed`` token ids
        and their ``promoted_logits``, ``suppressed_logits``).
    decode : callable
        Token id to text.
    n_components : int
    meta : dict
        ``title`` of the site and ``norm`` (the final norm folded into the
        logit effects).
    """
    top = view["top"]
    scale = max((abs(float(e["value"])) for e in top), default=0.0)
    nav = ['<a href="../index.html">index</a>']
    if atom > 0:
        nav.append(
            f'<a href="{atom - 1:05d}.html" rel="prev">&larr; atom {atom - 1}</a>'
        )
    if atom + 1 < n_components:
        nav.append(
            f'<a href="{atom + 1:05d}.html" rel="next">atom {atom + 1} &rarr;</a>'
        )
    nearest = view["nearest"]
    near = (
        f'<a href="{nearest:05d}.html">atom {nearest}</a>' if nearest >= 0 else "none"
    )
    stats = (
        '<table class="stats">'
        f"<tr><th>uses</th><td>{view['count']}</td></tr>"
        f"<tr><th>frequency</th><td>{_fmt(view['frequency'], 4)}</td></tr>"
        f"<tr><th>mean |code|</th><td>{_fmt(view['mean_abs'], 4)}</td></tr>"
        f"<tr><th>max |cos| to another atom</th><td>{_fmt(view['max_abs_cos'], 3)}"
        f" ({near})</td></tr></table>"
    )
    parts = [
        f"<nav>{' | '.join(nav)}</nav>",
        f"<h1>Atom {atom}</h1>",
        f'<p class="muted">{html.escape(meta["title"])}</p>',
        stats,
        "<h2>Histogram of nonzero codes</h2>",
        histogram_svg(*view["hist"]),
    ]
    effects = view.get("effects")
    if effects is not None:
        parts.append(
            "<h2>Logit effects</h2>"
            '<p class="muted">Tokens whose logits the atom raises and lowers '
            "when added to the residual stream with a positive code: "
            "<code>W_U @ d</code>, through the final norm "
            f"({html.escape(meta['norm'])})"
            "; a negative code swaps the two lists.</p>"
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
    legend = (
        '<p class="legend">Each token is shaded by this atom\'s code there: '
        '<span class="t p8">positive</span> <span class="t n8">negative</span> '
        '<span class="t x">not harvested</span>; the centre token is outlined. '
        "Hover a token for its code.</p>"
    )
    parts.append("<h2>Top activations</h2>" + legend)
    if top:
        parts.append('<div class="examples" id="top">')
        parts.extend(render_context(e, scale, decode) for e in top)
        parts.append("</div>")
    else:
        parts.append('<p class="muted">Never used.</p>')
    if view["quantiles"]:
        parts.append(
            "<h2>Examples by activation quantile</h2>"
            '<p class="muted">From a uniform sample of the uses of this atom, '
            "sorted by |code| and cut into bands.</p>"
        )
        for label, examples in view["quantiles"]:
            parts.append(f'<h3>{html.escape(label)}</h3><div class="examples">')
            parts.extend(render_context(e, scale, decode) for e in examples)
            parts.append("</div>")
    return _page(f"Atom {atom} - {meta['title']}", "".join(parts), "../")


def _json_script(element_id, data):
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    # "</script" would end the element early and "<!--" change how it is
    # parsed: no "<" at all, JSON reads "\\u003c" back as "<".
    text = text.replace("<", "\\u003c")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def render_index(rows, meta):
    """The index page: a sortable, filterable table of every atom.

    Parameters
    ----------
    rows : list of dict
        One per atom: ``atom``, ``count``, ``frequency``, ``mean_abs``,
        ``max_abs_cos``, ``nearest``, ``top_tokens`` (text of the tokens of
        its strongest examples) and ``promoted`` (text, may be empty).
    meta : dict
        ``title``, ``summary`` (lines about the dictionary and the data) and
        ``has_effects``.
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
        '<label><input id="hidedead" type="checkbox"> hide unused atoms</label> '
        '<span id="shown"></span></div>'
        '<table id="atoms" class="index"><thead><tr>'
        '<th data-key="atom">atom</th>'
        '<th data-key="frequency">frequency</th>'
        '<th data-key="mean_abs">mean |code|</th>'
        '<th data-key="max_abs_cos">max |cos|</th>'
        '<th data-key="top_tokens">top tokens</th>'
        + ('<th data-key="promoted">promotes</th>' if meta["has_effects"] else "")
        + "</tr></thead><tbody></tbody></table>"
        '<div class="pager"><button id="prev">&larr;</button> '
        '<span id="page"></span> <button id="next">&rarr;</button></div>'
        "<noscript><p>The table needs JavaScript; the atom pages do not: "
        '<a href="atoms/00000.html">atom 0</a>.</p></noscript>'
        + _json_script("atom-data", {"rows": rows, "has_effects": meta["has_effects"]})
    )
    return _page(meta["title"], body, "", scripts=("index.js",))
