"""Progress reporting of a fit: a tqdm bar when installed, else plain lines."""

import sys


class ProgressReporter:
    """Context manager showing step, relative error and variance explained.

    Parameters
    ----------
    n_steps : int
        Planned number of steps.
    verbose : bool or int
        Nothing is shown when false.
    """

    def __init__(self, n_steps, verbose):
        self.n_steps, self.verbose = n_steps, verbose
        self._bar = None

    def __enter__(self):
        if self.verbose:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # tqdm is an optional dependency (the cli extra)
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=self.n_steps, desc="DB-KSVD", unit="step")
        return self

    def update(self, info):
        if not self.verbose:
            return
        fields = {
            "rel_err": f"{info['relative_error']:.4f}",
            "var_expl": f"{info['variance_explained']:.4f}",
            "replaced": info.get("n_replaced", 0),
        }
        if self._bar is not None:
            self._bar.set_postfix(fields, refresh=False)
            self._bar.update(1)
        else:
            text = " ".join(f"{key}={value}" for key, value in fields.items())
            print(f"[DB-KSVD] step {info['step'] + 1}/{self.n_steps} {text}",
                  file=sys.stderr)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()
        return False
