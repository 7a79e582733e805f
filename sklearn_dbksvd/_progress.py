"""Progress reporting of a fit: a tqdm bar when installed, else plain lines."""

import sys
import time


class ProgressReporter:
    """Context manager showing step, relative error and variance explained.

    Parameters
    ----------
    n_steps : int
        Planned number of steps.
    verbose : bool or int
        Nothing is shown when false.
    initial : int, default=0
        Steps already done (a resumed fit).
    samples_seen : int, default=0
        Samples already processed (a resumed fit), for the samples/s rate.
    """

    def __init__(self, n_steps, verbose, initial=0, samples_seen=0):
        self.n_steps, self.verbose, self.initial = n_steps, verbose, initial
        self._bar = None
        # Wall clock between updates, so that reading the data counts too.
        self._last = (time.perf_counter(), samples_seen)

    def __enter__(self):
        self._last = (time.perf_counter(), self._last[1])
        if self.verbose:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # tqdm is an optional dependency (the cli extra)
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(
                    total=self.n_steps,
                    initial=self.initial,
                    desc="DB-KSVD",
                    unit="step",
                )
        return self

    def update(self, info):
        if not self.verbose:
            return
        fields = {
            "rel_err": f"{info['relative_error']:.4f}",
            "var_expl": f"{info['variance_explained']:.4f}",
            "replaced": info.get("n_replaced", 0),
        }
        now, seen = time.perf_counter(), info.get("n_samples_seen")
        last_time, last_seen = self._last
        if seen is not None and now > last_time:
            fields["samples/s"] = f"{(seen - last_seen) / (now - last_time):.0f}"
        self._last = (now, seen)
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
