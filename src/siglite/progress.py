"""Progress bars on stderr (tqdm: count, rate, ETA), off when stderr is not a terminal or when asked.

Library functions take a ``progress`` argument that is either None (silent) or a callable ``progress(n)`` called with
the number of items just finished; `bar` builds such a callable around a tqdm bar, and the CLI passes one in unless
``--quiet`` is given or stderr is redirected (so logs and pipes stay clean).
"""

from __future__ import annotations

import os
import sys
from typing import Callable

ProgressFn = Callable[[int], None]


def enabled(quiet: bool = False) -> bool:
    """Bars are drawn only for a person watching: stderr is a terminal and neither --quiet nor SIGLITE_QUIET."""
    if quiet or os.environ.get("SIGLITE_QUIET"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Bar:
    """A tqdm bar (or nothing when disabled); call it with the items just done, close it when finished."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", *, initial: int = 0, show: bool = True):
        self._bar = None
        if show:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is a dependency of transformers; without it the work is simply silent
                return
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, smoothing=0.05,
                             dynamic_ncols=True, leave=False)

    def __call__(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set_description(self, desc: str) -> None:
        if self._bar is not None:
            self._bar.set_description(desc)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total: int | None, desc: str, unit: str = "it", *, quiet: bool = False, initial: int = 0) -> Bar:
    """A `Bar` shown only when `enabled(quiet)`."""
    return Bar(total, desc, unit, initial=initial, show=enabled(quiet))
