"""The test tiers: `make test-fast` (-m "not spark and not slow") must leave out every test that
starts a JVM, whether through the spark fixture (even via another fixture) or as job processes."""

from __future__ import annotations

from pathlib import Path

from tests import conftest

ROOT = Path(__file__).resolve().parent.parent


def _tiers(pytester, *modules: str) -> dict[str, set[str]]:
    """Collect ``modules`` (in this process: they are imported already) → node id: its tier markers."""
    items, _ = pytester.inline_genitems(*(str(ROOT / "tests" / m) for m in modules), "-p", "no:cacheprovider")
    return {item.nodeid: {m.name for m in item.iter_markers()} & {"spark", "slow"} for item in items}


def test_spark_fixture_users_and_job_processes_are_marked_spark(pytester):
    # test_bad_frames: its tests get Spark only through the module fixture `bad_frames(spark, cfg)`;
    # test_crash_safety: no spark fixture at all, its jobs run as processes; test_config: no Spark.
    tiers = _tiers(pytester, "test_bad_frames.py", "test_crash_safety.py", "test_config.py")
    by_module: dict[str, list[set[str]]] = {}
    for node_id, marks in tiers.items():
        by_module.setdefault(node_id.split("::")[0], []).append(marks)
    assert set(by_module) == {"tests/test_bad_frames.py", "tests/test_crash_safety.py", "tests/test_config.py"}
    assert all(marks == {"spark"} for marks in by_module["tests/test_bad_frames.py"]), tiers
    assert all(marks == {"spark", "slow"} for marks in by_module["tests/test_crash_safety.py"]), tiers
    assert all(marks == set() for marks in by_module["tests/test_config.py"]), tiers


def test_the_tier_lists_name_existing_modules_and_tests():
    """A renamed module or test would silently leave its tier."""
    tests = ROOT / "tests"
    for module in conftest.SLOW_MODULES | conftest.SUBPROCESS_SPARK_MODULES:
        assert (tests / module).is_file(), module
    for node in conftest.SLOW_TESTS:
        module, test = node.split("::")
        assert f"def {test}(" in (tests / module).read_text(), node
