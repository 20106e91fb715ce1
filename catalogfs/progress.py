"""Live progress of long Spark stages: a driver thread logs "done of total, per second" from an
accumulator the tasks add to. Logged at INFO, so ``--quiet`` hides it."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("catalogfs.progress")


class Progress:
    """``with Progress("embedding", total, accumulator): ...`` logs every ``interval`` seconds."""

    def __init__(self, what: str, total: int, accumulator, *, unit: str = "frames", interval: float = 5.0) -> None:
        self.what, self.total, self.accumulator, self.unit, self.interval = what, total, accumulator, unit, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="catalogfs-progress", daemon=True)
        self._start = 0.0

    def _line(self) -> str:
        done = int(self.accumulator.value)
        elapsed = max(time.monotonic() - self._start, 1e-9)
        pct = 100.0 * done / self.total if self.total else 100.0
        return f"{self.what}: {done}/{self.total} {self.unit} ({pct:.0f}%), {done / elapsed:.1f} {self.unit}/s"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            log.info(self._line())

    def __enter__(self) -> "Progress":
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        log.info(self._line())
