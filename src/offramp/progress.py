"""Progress for long work: a tqdm bar on a terminal, one plain line every so often in a piped log.

A tqdm bar redrawn into a log file or CI output becomes thousands of carriage-return fragments; without
a terminal, :func:`progress_bar` prints ``desc: n/total (pct%) key=value`` at most every
``log_seconds`` and once at the end instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

LOG_SECONDS = 30.0


class LineProgress:
    """The subset of tqdm's interface offramp uses, printing whole lines to stderr."""

    def __init__(
        self, iterable: Iterable[Any] | None, total: int | None, desc: str, initial: int, log_seconds: float
    ):
        self.iterable, self.desc, self.n = iterable, desc, initial
        self.total = total if total is not None else _len(iterable)
        self.log_seconds, self.postfix = log_seconds, ""
        self._last = time.monotonic()
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.log_seconds:
            self._print()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._print()

    def _print(self) -> None:
        self._last = time.monotonic()
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else str(self.n)
        print(f"{self.desc}: {done} {self.postfix}".rstrip(), file=sys.stderr, flush=True)


def _len(iterable: Iterable[Any] | None) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    enabled: bool = True,
    initial: int = 0,
    unit: str = "it",
    log_seconds: float = LOG_SECONDS,
) -> Any:
    """A tqdm bar when stderr is a terminal, a :class:`LineProgress` otherwise, a silent one if disabled."""
    if enabled and not sys.stderr.isatty():
        return LineProgress(iterable, total, desc, initial, log_seconds)
    return tqdm(
        iterable, total=total, desc=desc, initial=initial, unit=unit, disable=not enabled, leave=False
    )
