"""scripts/slowest_tests.py: the slowest tests and modules of a `make test` run from its JUnit files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("slowest_tests", ROOT / "scripts" / "slowest_tests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stage(path: Path, cases: list[tuple[str, str, float, str]]) -> None:
    body = "".join(f'<testcase file="{f}" classname="{f[:-3].replace("/", ".")}" name="{n}" time="{t}">{extra}</testcase>'
                   for f, n, t, extra in cases)
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite>{body}</testsuite></testsuites>')


def test_slowest_tests_and_modules_across_stages(tmp_path):
    _stage(tmp_path / "jvm.xml", [("tests/test_a.py", "test_one", 10.0, ""), ("tests/test_a.py", "test_two", 25.0, ""),
                                  ("tests/test_b.py", "test_three", 30.0, "<failure/>")])
    _stage(tmp_path / "slow.xml", [("tests/test_c.py", "test_four", 50.0, "")])
    script = _script()
    times = script.read_stages(tmp_path)
    assert script.module_report(times, 2).splitlines() == [
        "2 slowest modules (their tests together):",
        "     50.0 s  slow  tests/test_c.py",
        "     35.0 s  jvm   tests/test_a.py"]
    report = script.report(times, 2).splitlines()
    assert report[1:3] == ["    50.00 s  slow  tests/test_c.py::test_four",
                           "    30.00 s  jvm   tests/test_b.py::test_three  (failed)"]
    assert report[-1] == "total: 4 tests (3 passed, 1 failed) in 115.0 s"
