"""One notion of a latent for the dashboard and ``evaluate``.

A dictionary with signed codes has two latents per atom, as in the
``[D; -D]`` SAELens export and the codes of ``split_sign=True``: latent
``i`` (named ``"i+"``) carries the positive codes of atom ``i`` and latent
``m + i`` (``"i\N{MINUS SIGN}"``) the size of its negative codes, along the
direction ``-d_i``. A dictionary with ``positive_code=True`` has one latent
per atom, latent ``i`` named ``"i"``.
"""

import copy

import numpy as np

MINUS = "\N{MINUS SIGN}"


class Latents:
    """The latents of a fitted dictionary.

    Parameters
    ----------
    estimator : fitted estimator
        A DB-KSVD estimator, whose codes are signed unless it has
        ``positive_code=True``; or any other transformer with
        ``components_`` (an SAE), whose code columns are its latents.

    Attributes
    ----------
    n_atoms : int
    signed : bool
        Whether each atom is two latents.
    n_latents : int
        ``2 * n_atoms`` when ``signed``, else ``n_atoms``.
    """

    def __init__(self, estimator):
        self.n_atoms = int(np.shape(estimator.components_)[0])
        params = estimator.get_params() if hasattr(estimator, "get_params") else {}
        # Another transformer (an SAE, ...): its code columns are its latents.
        self.splits = "split_sign" in params
        self.signed = self.splits and not params.get("positive_code", False)
        self.n_latents = 2 * self.n_atoms if self.signed else self.n_atoms

    def atom(self, latent):
        """The atom of ``latent``."""
        return latent % self.n_atoms

    def sign(self, latent):
        """+1 for a latent of positive codes, -1 for one of negative codes."""
        return -1 if latent >= self.n_atoms else 1

    def label(self, latent):
        """``"12+"``, ``"12\N{MINUS SIGN}"``, or ``"12"`` for positive codes."""
        atom = self.atom(latent)
        if not self.signed:
            return str(atom)
        return f"{atom}{'+' if self.sign(latent) > 0 else MINUS}"

    def file(self, latent):
        """Page of ``latent`` relative to the site: ``latents/00012+.html``."""
        atom = self.atom(latent)
        if not self.signed:
            return f"latents/{atom:05d}.html"
        return f"latents/{atom:05d}{'+' if self.sign(latent) > 0 else '-'}.html"

    def twin(self, latent):
        """The latent of the other sign of the same atom, or None."""
        if not self.signed:
            return None
        return (latent + self.n_atoms) % self.n_latents

    def order(self):
        """Latents atom by atom: ``0+, 0-, 1+, 1-, ...``."""
        return [self.at(position) for position in range(self.n_latents)]

    def position(self, latent):
        """Where ``latent`` comes in :meth:`order`."""
        if not self.signed:
            return latent
        return 2 * self.atom(latent) + (latent >= self.n_atoms)

    def at(self, position):
        """The latent at ``position`` of :meth:`order`."""
        if not self.signed:
            return position
        atom, negative = divmod(position, 2)
        return atom + negative * self.n_atoms

    def directions(self, components):
        """The decoder direction of every latent: ``[D; -D]`` or ``D``."""
        components = np.asarray(components)
        return np.concatenate([components, -components]) if self.signed else components

    def encoder(self, estimator, *, sparse_output, n_jobs=None):
        """An estimator whose codes are one column per latent.

        For a DB-KSVD estimator, a shallow copy with ``split_sign``,
        ``sparse_output`` and ``n_jobs`` set; the caller's estimator keeps
        its parameters. Another transformer is returned as it is.
        """
        if not self.splits:
            return estimator
        encoder = copy.copy(estimator)
        encoder.set_params(split_sign=self.signed, sparse_output=sparse_output)
        if n_jobs is not None:
            encoder.set_params(n_jobs=n_jobs)
        return encoder
