"""How far slow work got, as the library sees it; the command line alone shows it.

Two kinds of report, both no-ops until someone listens:

- :func:`report` ``(stage, done, total)``: a stage's count of finished units (images, calibration
  images, convolutions). The jobs report through their engine's callback; work that happens
  before a job starts (building and checking an INT8 model) reports here.
- :func:`add_passes` ``(n)``: ``n`` images went through the backbone (one call per runner call, so
  Score-CAM's masked inputs, the faithfulness curves and aug-smooth move it many times per image).
  :func:`passes` reads the running total; the command line polls it on a timer, so a screen
  shows work moving even while one image takes a minute.

Plain module state under a lock: the callers are this process's threads (a Ray worker's passes
stay in its own process; its engine reports finished slices).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Report = Callable[[str, int, "int | None"], None]

_lock = threading.Lock()
_passes = 0
_listener: Report | None = None


def add_passes(n: int) -> None:
    """Count ``n`` images run through a backbone (a forward pass each)."""
    global _passes
    with _lock:
        _passes += int(n)


def passes() -> int:
    """Images run through a backbone in this process so far."""
    return _passes


def report(stage: str, done: int, total: int | None = None) -> None:
    """Tell the listener, if any, that ``done`` of ``total`` units of ``stage`` are finished."""
    listener = _listener
    if listener is not None:
        listener(stage, done, total)


@contextmanager
def listening(listener: Report | None) -> Iterator[None]:
    """Send :func:`report` calls to ``listener`` for the duration (None: nobody listens)."""
    global _listener
    previous, _listener = _listener, listener
    try:
        yield
    finally:
        _listener = previous


def counting(stage: str, items: list, total: int | None = None) -> Iterator:
    """``items``, reporting ``stage`` before the first and after each one."""
    total = len(items) if total is None else total
    report(stage, 0, total)
    for done, item in enumerate(items, start=1):
        yield item
        report(stage, done, total)
