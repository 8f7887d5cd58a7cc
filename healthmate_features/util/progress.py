"""Progress of a long step: a tqdm bar on stderr whose elapsed time keeps moving, or nothing at all.

tqdm redraws a bar only when it advances; a step that waits for minutes on one opaque call (a
`feast apply`, one feature view's materialization) would look frozen. `ticking_bar` redraws it
every second from a daemon thread while the step runs. Whether to show progress at all is the
caller's choice (`enabled`); the command line shows it only on a terminal and without --quiet.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def ticking_bar(
    *,
    desc: str,
    enabled: bool,
    total: int | None = None,
    unit: str = "it",
    bar_format: str | None = None,
    interval_s: float = 1.0,
) -> Iterator[Any]:
    """Yield a tqdm bar on stderr that redraws every `interval_s` seconds; a disabled one if not `enabled`.

    Side effects (enabled only): draws on sys.stderr and runs one daemon thread until the block
    ends; the bar stays on screen afterwards with its final count and elapsed time.
    """
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        bar_format=bar_format,
    )
    stop = threading.Event()
    ticker = None
    if enabled:

        def tick() -> None:
            while not stop.wait(interval_s):
                bar.refresh()

        ticker = threading.Thread(target=tick, name=f"progress:{desc}", daemon=True)
        ticker.start()
    try:
        yield bar
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
        bar.close()
