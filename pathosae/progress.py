"""Progress on stderr for the stages' long parts: a bar for a loop, a line for a single step.

Bars are tqdm bars with the project's defaults (those of the SAE stage's training bar): on
stderr, cleared when the loop ends (``leave=False``), redrawn at most twice a second. Lines read
``[stage] message`` and are flushed at once, so a Slurm log shows where a stage is. Nothing here
changes what a stage computes or writes. ``TQDM_DISABLE=1`` hides the bars.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

MININTERVAL_S = 0.5


def bar(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """``iterable`` with a progress bar on stderr that disappears when the loop ends."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False,
                mininterval=MININTERVAL_S, file=sys.stderr)


@contextmanager
def ticker(desc: str, total: int, unit: str = "it") -> Iterator[Callable[[str], None]]:
    """A bar advanced by hand, for loops that run inside code that cannot hold a bar.

    ``tick(label)`` marks the start of the next item (every item before it is done) and shows
    ``label``; when the block ends without an error the bar completes and disappears.
    """
    with tqdm(total=total, desc=desc, unit=unit, leave=False, mininterval=MININTERVAL_S,
              file=sys.stderr) as pbar:
        started = 0

        def tick(label: str) -> None:
            nonlocal started
            if started:
                pbar.update(1)
            started += 1
            pbar.set_postfix_str(label)

        yield tick
        pbar.update(max(0, total - pbar.n))


def step(stage: str, message: str) -> None:
    """One line ``[stage] message`` on stderr, flushed at once (above any bar in progress)."""
    tqdm.write(f"[{stage}] {message}", file=sys.stderr)
    sys.stderr.flush()
