"""Per-column statistics of sparse codes, streamed chunk by chunk.

The dashboard feeds it one column per latent (both signs of an atom are two
columns, see :mod:`sklearn_dbksvd.lm._latents`); the statistics themselves
only see columns, called atoms below. Memory is bounded by the dictionary,
never by the number of rows: for each column a fixed number of kept examples
(the strongest codes, a uniform sample) with their contexts, and a fixed
number of histogram bins. NumPy only.
"""

import numpy as np
from sklearn.utils import check_random_state

#: Fields of the token table that the statistics read (``TOKEN_DTYPE`` of
#: :mod:`sklearn_dbksvd.lm.harvest`).
TOKEN_FIELDS = ("token_id", "document", "position")

# Exponent of an atom whose histogram has not seen a code yet.
_EMPTY = np.iinfo(np.int64).min
# Histogram ranges grow by powers of two; more than this many doublings at
# once put every old count in the two middle bins anyway.
_MAX_DOUBLINGS = 60


def top_per_group(groups, scores, n_keep):
    """The ``n_keep`` highest scores of each group.

    Parameters
    ----------
    groups : ndarray of shape (n,), dtype int
    scores : ndarray of shape (n,)
    n_keep : int

    Returns
    -------
    keep : ndarray of int
        Indices into ``groups``, sorted by group, then by decreasing score
        (ties: the earlier index first).
    rank : ndarray of int
        Rank of each kept index within its group, 0 for the highest score.
    """
    order = np.lexsort((-scores, groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    lengths = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, lengths)
    kept = rank < n_keep
    return order[kept], rank[kept]


class KeptExamples:
    """The ``n_keep`` highest-scoring examples of each atom, with payloads.

    Slots of an atom are sorted by decreasing score; empty slots have the
    score ``-inf``.

    Parameters
    ----------
    n_components : int
    n_keep : int
    fields : dict of str to (shape, dtype, fill)
        Payload stored with each example: per-example shape, dtype and the
        value of empty slots.
    """

    def __init__(self, n_components, n_keep, fields):
        self.n_keep = n_keep
        self.score = np.full((n_components, n_keep), -np.inf)
        self.fields = {
            name: np.full((n_components, n_keep, *shape), fill, dtype=dtype)
            for name, (shape, dtype, fill) in fields.items()
        }
        self._fill = {name: fill for name, (_, _, fill) in fields.items()}

    def offer(self, atoms, scores, payload):
        """Keep the candidates that beat the examples already kept.

        Parameters
        ----------
        atoms : ndarray of shape (n,), dtype int
        scores : ndarray of shape (n,)
        payload : callable
            ``payload(indices)`` returns a dict, one array per field, for the
            candidates ``indices``; it is called only for candidates that may
            be kept, so that contexts are built for few of them.
        """
        # A candidate must beat the atom's weakest kept example.
        candidates = np.flatnonzero(scores > self.score[atoms, -1])
        if not candidates.size:
            return
        local, _ = top_per_group(atoms[candidates], scores[candidates], self.n_keep)
        candidates = candidates[local]
        touched = np.unique(atoms[candidates])
        old_scores = self.score[touched].ravel()
        old = np.flatnonzero(old_scores > -np.inf)
        merged_atoms = np.concatenate(
            [np.repeat(touched, self.n_keep)[old], atoms[candidates]]
        )
        merged_scores = np.concatenate([old_scores[old], scores[candidates]])
        new = payload(candidates)
        merged = {
            name: np.concatenate(
                [values[touched].reshape(-1, *values.shape[2:])[old], new[name]]
            )
            for name, values in self.fields.items()
        }
        keep, rank = top_per_group(merged_atoms, merged_scores, self.n_keep)
        rows = np.searchsorted(touched, merged_atoms[keep])
        score = np.full((len(touched), self.n_keep), -np.inf)
        score[rows, rank] = merged_scores[keep]
        self.score[touched] = score
        for name, values in self.fields.items():
            block = np.full(
                (len(touched), *values.shape[1:]), self._fill[name], values.dtype
            )
            block[rows, rank] = merged[name][keep]
            values[touched] = block


def rebin_histogram(counts, doublings, nonnegative=False):
    """Counts of a histogram whose range grows by ``2**doublings``.

    Bin ``j`` of ``n_bins`` over ``[-R, R]`` lies inside bin
    ``(j + n_bins / 2 * (2**d - 1)) // 2**d`` over ``[-2**d R, 2**d R]``,
    and bin ``j`` over ``[0, R]`` inside bin ``j // 2**d`` over
    ``[0, 2**d R]``, so the counts move exactly (``n_bins`` even).

    Parameters
    ----------
    counts : ndarray of shape (n_atoms, n_bins)
    doublings : int
    nonnegative : bool, default=False
        The histogram covers ``[0, R]`` rather than ``[-R, R]``.

    Returns
    -------
    counts : ndarray of shape (n_atoms, n_bins)
    """
    n_bins = counts.shape[1]
    factor = 2 ** min(int(doublings), _MAX_DOUBLINGS)
    if nonnegative:
        target = np.arange(n_bins) // factor
    else:
        target = (np.arange(n_bins) + n_bins // 2 * (factor - 1)) // factor
    grown = np.zeros_like(counts)
    np.add.at(grown, (slice(None), target), counts)
    return grown


class AtomStatistics:
    """Streaming statistics of the codes of each atom.

    Feed it the CSR codes of consecutive chunks of harvested rows with
    :meth:`update`. Only nonzero codes count as uses of an atom.

    Parameters
    ----------
    n_components : int
        Atoms of the dictionary.
    n_top : int, default=20
        Strongest examples (largest ``|code|``) kept per atom.
    n_samples : int, default=32
        Uniformly sampled uses kept per atom (bottom-k sampling by a random
        key), from which the examples of activation quantiles are drawn.
    n_bins : int, default=128
        Bins of the histogram of the nonzero codes of each atom; a multiple
        of 4. Its range is ``[-2**e, 2**e]`` (``[0, 2**e]`` when
        ``nonnegative``), the smallest power of two that holds every code
        seen, and doubles (merging bins in pairs) when a larger code arrives.
    nonnegative : bool, default=False
        The codes are never negative (latents): the histograms cover only
        ``[0, 2**e]``, with all their bins.
    window : int, default=8
        Tokens kept on each side of an example.
    random_state : int, RandomState instance or None, default=None
        Seeds the sampling keys.

    Attributes
    ----------
    n_rows_ : int
        Rows seen.
    count_ : ndarray of shape (n_components,)
        Nonzero codes of each atom.
    abs_sum_ : ndarray of shape (n_components,)
        Sum of ``|code|`` over them.
    top_, sample_ : KeptExamples
        Fields ``value`` (the code), ``row`` (global row index), ``tokens``
        (the token ids at positions ``-window .. window`` of the same
        document, -1 where no row was harvested) and ``codes`` (the atom's
        code at those positions, NaN where no row was harvested).
    hist_counts_ : ndarray of shape (n_components, n_bins)
    hist_exponent_ : ndarray of shape (n_components,)
        The histogram of atom ``a`` covers ``[-2**e, 2**e]`` (``[0, 2**e]``
        when ``nonnegative``), ``e = hist_exponent_[a]`` (meaningless while
        ``count_[a]`` is 0).
    """

    def __init__(
        self,
        n_components,
        *,
        n_top=20,
        n_samples=32,
        n_bins=128,
        window=8,
        random_state=None,
        nonnegative=False,
    ):
        if n_bins < 4 or n_bins % 4:
            raise ValueError(f"n_bins must be a positive multiple of 4; got {n_bins}.")
        self.n_components = n_components
        self.nonnegative = nonnegative
        self.window = window
        self.n_bins = n_bins
        self._rng = check_random_state(random_state)
        width = 2 * window + 1
        fields = {
            "value": ((), np.float32, 0),
            "row": ((), np.int64, -1),
            "tokens": ((width,), np.int32, -1),
            "codes": ((width,), np.float32, np.nan),
        }
        self.top_ = KeptExamples(n_components, n_top, fields)
        self.sample_ = KeptExamples(n_components, n_samples, fields)
        self.n_rows_ = 0
        self.count_ = np.zeros(n_components, dtype=np.int64)
        self.abs_sum_ = np.zeros(n_components)
        self.hist_counts_ = np.zeros((n_components, n_bins), dtype=np.int64)
        self.hist_exponent_ = np.full(n_components, _EMPTY, dtype=np.int64)

    def update(self, codes, tokens, core, first_row):
        """Add the codes of one chunk of consecutive harvested rows.

        Parameters
        ----------
        codes : scipy.sparse.csr_matrix of shape (n_rows, n_components)
            Codes of the chunk, including ``window`` rows of padding on each
            side (fewer at the ends of the harvest) so that contexts cross
            chunk boundaries.
        tokens : ndarray of shape (n_rows,)
            Structured array with the fields ``token_id``, ``document`` and
            ``position`` of each row; rows of a document are consecutive and
            in increasing position.
        core : slice
            Rows of the chunk that are counted; the others are padding.
        first_row : int
            Global index of row 0 of the chunk.
        """
        codes = codes.tocsr()
        codes.sort_indices()
        rows = np.repeat(np.arange(codes.shape[0]), np.diff(codes.indptr)).astype(
            np.int64
        )
        atoms = codes.indices.astype(np.int64)
        values = codes.data
        # Keys of every nonzero, ascending: look-ups of (row, atom) codes.
        keys = rows * self.n_components + atoms
        counted = (rows >= core.start) & (rows < core.stop) & (values != 0)
        used_rows, used_atoms = rows[counted], atoms[counted]
        used_values = values[counted]
        self.n_rows_ += core.stop - core.start
        self.count_ += np.bincount(used_atoms, minlength=self.n_components)
        magnitude = np.abs(used_values).astype(np.float64)
        self.abs_sum_ += np.bincount(
            used_atoms, weights=magnitude, minlength=self.n_components
        )
        self._add_to_histograms(used_atoms, used_values, magnitude)

        document = np.asarray(tokens["document"], dtype=np.int64)
        position = np.asarray(tokens["position"], dtype=np.int64)
        token_id = np.asarray(tokens["token_id"], dtype=np.int32)
        offsets = np.arange(-self.window, self.window + 1)

        def payload(indices):
            centre = used_rows[indices]
            atom = used_atoms[indices]
            # Rows within +-window rows hold every harvested position within
            # +-window positions: positions of a document increase by >= 1.
            unclipped = centre[:, None] + offsets
            neighbour = np.clip(unclipped, 0, codes.shape[0] - 1)
            slot = position[neighbour] - position[centre][:, None] + self.window
            valid = (
                (neighbour == unclipped)
                & (document[neighbour] == document[centre][:, None])
                & (slot >= 0)
                & (slot <= 2 * self.window)
            )
            which, _ = np.nonzero(valid)
            slot, neighbour = slot[valid], neighbour[valid]
            context_tokens = np.full((len(indices), len(offsets)), -1, np.int32)
            context_tokens[which, slot] = token_id[neighbour]
            context_codes = np.full((len(indices), len(offsets)), np.nan, np.float32)
            wanted = neighbour * self.n_components + atom[which]
            found = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
            hit = keys[found] == wanted if len(keys) else np.zeros(0, bool)
            context_codes[which, slot] = np.where(hit, values[found], 0)
            return {
                "value": used_values[indices].astype(np.float32),
                "row": centre + first_row,
                "tokens": context_tokens,
                "codes": context_codes,
            }

        self.top_.offer(used_atoms, magnitude, payload)
        self.sample_.offer(
            used_atoms, self._rng.random_sample(len(used_atoms)), payload
        )

    def _add_to_histograms(self, atoms, values, magnitude):
        if not len(atoms):
            return
        largest = np.zeros(self.n_components)
        np.maximum.at(largest, atoms, magnitude)
        seen = np.flatnonzero(largest > 0)
        needed = np.ceil(np.log2(largest[seen])).astype(np.int64)
        current = self.hist_exponent_[seen]
        first = current == _EMPTY
        self.hist_exponent_[seen[first]] = needed[first]
        grow = ~first & (needed > current)
        for doublings in np.unique(needed[grow] - current[grow]):
            which = seen[grow][(needed[grow] - current[grow]) == doublings]
            self.hist_counts_[which] = rebin_histogram(
                self.hist_counts_[which], doublings, self.nonnegative
            )
            self.hist_exponent_[which] += doublings
        half_range = np.exp2(self.hist_exponent_[atoms].astype(np.float64))
        if self.nonnegative:
            position = values / half_range * self.n_bins
        else:
            position = (values / half_range + 1) * (self.n_bins / 2)
        bins = np.floor(position).astype(np.int64)
        bins = np.clip(bins, 0, self.n_bins - 1)
        self.hist_counts_ += np.bincount(
            atoms * self.n_bins + bins, minlength=self.n_components * self.n_bins
        ).reshape(self.n_components, self.n_bins)

    def histogram(self, atom):
        """Counts and bin edges of the nonzero codes of ``atom``, trimmed.

        Returns
        -------
        counts : ndarray of shape (n,)
        edges : ndarray of shape (n + 1,)
            Empty bins at both ends are dropped; both are empty for an
            unused atom.
        """
        counts = self.hist_counts_[atom]
        nonzero = np.flatnonzero(counts)
        if not nonzero.size:
            return counts[:0], np.zeros(0)
        half_range = 2.0 ** self.hist_exponent_[atom]
        low = 0.0 if self.nonnegative else -half_range
        edges = np.linspace(low, half_range, self.n_bins + 1)
        lo, hi = nonzero[0], nonzero[-1] + 1
        return counts[lo:hi], edges[lo : hi + 1]
