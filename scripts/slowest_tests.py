"""The slowest tests of a `make test` run and its totals, from the JUnit XML files of its stages.

    python scripts/slowest_tests.py [--top 25] [--modules 12] RESULTS_DIR

RESULTS_DIR holds one ``<stage>.xml`` per pytest stage (pytest ``--junitxml``, family xunit1). A test's
time is its setup, call and teardown together.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple


class TestTime(NamedTuple):
    seconds: float
    stage: str
    test: str  # pytest's node id
    outcome: str  # passed, failed, error or skipped


def node_id(case: ET.Element) -> str:
    """``tests/test_x.py::TestY::test_z[p]`` from a testcase's file, classname and name."""
    file, classname, name = case.get("file", ""), case.get("classname", ""), case.get("name", "")
    if not file:
        return f"{classname}::{name}"
    module = file.removesuffix(".py").replace("/", ".")
    inner = classname[len(module) + 1:].replace(".", "::") if classname.startswith(module + ".") else ""
    return "::".join(part for part in (file, inner, name) if part)


def outcome(case: ET.Element) -> str:
    for tag, word in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        if case.find(tag) is not None:
            return word
    return "passed"


def read_stages(folder: Path) -> list[TestTime]:
    """Every testcase of every ``*.xml`` in ``folder``, its stage the file's name."""
    times = []
    for path in sorted(folder.glob("*.xml"), key=lambda p: p.stat().st_mtime):
        for case in ET.parse(path).iter("testcase"):
            times.append(TestTime(float(case.get("time") or 0.0), path.stem, node_id(case), outcome(case)))
    return times


def report(times: list[TestTime], top: int) -> str:
    """The ``top`` slowest tests, slowest first, then one line of totals per stage and overall."""
    if not times:
        return "no tests ran"
    lines = [f"{min(top, len(times))} slowest tests (setup + call + teardown), all stages:"]
    lines += [f"{t.seconds:9.2f} s  {t.stage:<5} {t.test}" + ("" if t.outcome == "passed" else f"  ({t.outcome})")
              for t in sorted(times, key=lambda t: -t.seconds)[:top]]
    stages = list(dict.fromkeys(t.stage for t in times))
    for name in [*stages, None]:
        chosen = [t for t in times if name is None or t.stage == name]
        counts = {word: sum(t.outcome == word for t in chosen) for word in ("passed", "failed", "error", "skipped")}
        detail = ", ".join(f"{n} {word}" for word, n in counts.items() if n)
        lines.append(f"{'total' if name is None else 'stage ' + name}: {len(chosen)} tests ({detail}) in "
                     f"{sum(t.seconds for t in chosen):.1f} s")
    return "\n".join(lines)


def module_report(times: list[TestTime], top: int) -> str:
    """The ``top`` modules whose tests took longest in all (what tests/conftest.py's LONGEST_FIRST
    orders, so that the parallel stages do not end on one long module)."""
    totals: dict[tuple[str, str], float] = {}
    for t in times:
        key = (t.stage, t.test.split("::")[0])
        totals[key] = totals.get(key, 0.0) + t.seconds
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:top]
    return "\n".join([f"{len(ranked)} slowest modules (their tests together):"]
                     + [f"{seconds:9.1f} s  {stage:<5} {module}" for (stage, module), seconds in ranked])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="folder of the stages' JUnit XML files")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--modules", type=int, default=12, help="also the slowest modules (0: not)")
    args = parser.parse_args(argv)
    times = read_stages(args.results)
    if args.modules and times:
        print(module_report(times, args.modules))
    print(report(times, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
