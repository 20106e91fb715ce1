#!/usr/bin/env bash
# `make test` (what CI runs, through .ci/run): the whole house in stages that fail fast, so a broken
# submission fails in minutes: lint → the tests without a JVM → the JVM tests → the slow tier. Each
# stage prints `stage NAME: passed|failed in N s`; the first failure stops the run and its exit status
# is the run's. At the end, the 25 slowest tests of all the stages that ran, and the totals.
#
# The JVM and slow stages run their modules on TEST_WORKERS parallel pytest workers (pytest-xdist,
# `--dist loadfile`: a module and its fixtures stay on one worker; each worker has its own Spark
# session and data root). Default 2, the machine's cores. The suite is CPU-bound: one worker alone
# keeps about 1.5 cores busy (its JVM's JIT compilers run beside the work: C2 took 30% of the CPU of a
# JVM module here), so a second worker gains far less than half. TEST_WORKERS=0 runs each stage
# in one process. The fast stage stays in one process (its tests take a minute; workers would cost
# more to start than they save).
#
# Arguments go to every pytest stage (e.g. `make test ARGS=-x`). TEST_RESULTS=DIR keeps the stages' JUnit
# XML files there (scripts/slowest_tests.py reads them: the slowest tests and modules).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="$root/.venv/bin/python"
# one JUnit XML per pytest stage, for the slowest tests across stages; kept in TEST_RESULTS when set
if [ -n "${TEST_RESULTS:-}" ]; then
  results="$TEST_RESULTS"
  mkdir -p "$results"
else
  results="$(mktemp -d)"
  trap 'rm -rf "$results"' EXIT
fi

stage() {  # stage NAME COMMAND…: run COMMAND, print its one line, return its status
  local name="$1" start=$SECONDS status=0
  shift
  "$@" || status=$?
  echo "stage $name: $([ "$status" -eq 0 ] && echo passed || echo failed) in $((SECONDS - start)) s"
  return "$status"
}

workers="${TEST_WORKERS:-2}"

tests() {  # tests NAME MARKERS PARALLEL: one tier of the suite (PARALLEL: yes, on the workers)
  local name="$1" markers="$2" parallel=() status=0
  if [ "$3" = yes ] && [ "$workers" -gt 0 ]; then
    # --no-loadscope-reorder: xdist would hand out modules by their number of tests, most first,
    # and the longest modules (one long test each) would start last; tests/conftest.py's
    # LONGEST_FIRST order is kept instead
    parallel=(-n "$workers" --dist loadfile --no-loadscope-reorder)
  fi
  "$py" -m pytest -m "$markers" "${parallel[@]}" --junitxml="$results/$name.xml" -o junit_family=xunit1 "${@:4}" \
    || status=$?
  [ "$status" -eq 5 ] && status=0  # pytest: no test has these markers
  return "$status"
}

status=0
bash scripts/ensure_tools.sh requirements-test.txt || exit $?
stage lint bash scripts/lint.sh \
  && stage fast tests fast "not spark and not slow" no "$@" \
  && stage jvm tests jvm "spark and not slow" yes "$@" \
  && stage slow tests slow "slow" yes "$@" \
  || status=$?
"$py" scripts/slowest_tests.py --top 25 "$results"
exit "$status"
