"""Progress of a long job on stderr: tqdm's bar on a terminal, and in a log file (stderr not a terminal) one plain
line every ~15 s instead of a bar redrawn hundreds of times. Used by `extract` and `predict`."""
from __future__ import annotations

import sys
import time


class LineProgress:
    """One plain line every ``every`` seconds and one at the end."""

    def __init__(self, total: int, desc: str, every: float = 15.0):
        self.total, self.desc, self.every, self.n, self.postfix = total, desc, every, 0, ""
        self.start = self.last = time.perf_counter()

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int) -> None:
        self.n += n
        if time.perf_counter() - self.last >= self.every:
            self._line()

    def close(self) -> None:
        if self.n:
            self._line()

    def _line(self) -> None:
        self.last = time.perf_counter()
        elapsed = self.last - self.start
        print(f"{self.desc}: {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%), {elapsed:.0f} s"
              + (f", {self.postfix}" if self.postfix else ""), file=sys.stderr, flush=True)


def progress_bar(total: int, desc: str, enabled: bool = True, *, unit: str = "utt", position: int | None = None):
    """tqdm on a terminal, :class:`LineProgress` in a log, nothing when not ``enabled``."""
    from tqdm.auto import tqdm
    if enabled and not sys.stderr.isatty():
        return LineProgress(total, desc)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, position=position, smoothing=0.1,
                dynamic_ncols=True)
