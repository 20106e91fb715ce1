import logging
import time

from catalogfs.progress import Progress


class _Counter:
    value = 0


def test_progress_logs_done_of_total_and_rate(caplog):
    counter = _Counter()
    with caplog.at_level(logging.INFO, logger="catalogfs.progress"):
        with Progress("embedding", 40, counter, interval=0.05):
            for _ in range(4):
                counter.value += 10
                time.sleep(0.06)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) >= 2
    assert lines[-1].startswith("embedding: 40/40 frames (100%)") and "frames/s" in lines[-1]


def test_quiet_hides_progress(caplog):
    with caplog.at_level(logging.WARNING):
        with Progress("embedding", 1, _Counter(), interval=0.01):
            time.sleep(0.03)
    assert not caplog.records
