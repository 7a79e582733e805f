"""Progress of the long language-model jobs: a bar on a terminal, lines in a log."""

import sys
import time

#: Seconds between two progress lines.
LINE_SECONDS = 10.0


class Progress:
    """A tqdm bar, plain lines on stderr, or nothing.

    Parameters
    ----------
    progress : bool or "lines"
        ``True``: a tqdm bar (lines when tqdm is not installed); ``"lines"``:
        a line on stderr every :data:`LINE_SECONDS` seconds and one at the
        end, for logs; ``False``: nothing.
    desc : str
        What runs, first on every line (``"evaluate"``).
    total : int or None
        Rows or tokens expected, if known.
    noun : str, default="tokens"
        What is counted.
    initial : int, default=0
        Already done before this run (a resumed job).
    """

    def __init__(self, progress, desc, total=None, noun="tokens", initial=0):
        self.desc, self.total, self.noun = desc, total, noun
        self.lines = progress == "lines"
        self.bar = None
        self.done = initial
        self.start = self.last = time.monotonic()
        if progress and not self.lines:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                self.lines = True
            else:
                self.bar = tqdm(total=total, initial=initial, unit="tok", desc=desc)

    def _line(self, extra, finished=False):
        of = "" if self.total is None else f" of {self.total}"
        state = "done: " if finished else ""
        elapsed = time.monotonic() - self.start
        print(
            f"{self.desc}: {state}{self.done}{of} {self.noun}{extra}, {elapsed:.1f} s",
            file=sys.stderr,
            flush=True,
        )

    def update(self, n_new, extra=""):
        """``n_new`` more done; ``extra`` (e.g. ``", 8 documents"``) ends the line."""
        self.done += n_new
        if self.bar is not None:
            self.bar.update(n_new)
        elif self.lines and time.monotonic() - self.last >= LINE_SECONDS:
            self.last = time.monotonic()
            self._line(extra)

    def close(self, extra=""):
        """End the bar, or write the last line."""
        if self.bar is not None:
            self.bar.close()
        elif self.lines:
            self._line(extra, finished=True)
