#!/usr/bin/env bash
# `make test` (what CI runs, through .ci/run): the whole house in stages that fail fast, so a broken
# submission fails in minutes: lint → the tests without a JVM → the JVM tests → the slow tier. Each
# stage prints `stage NAME: passed|failed in N s`; the first failure stops the run and its exit status
# is the run's. At the end, the 25 slowest tests of all the stages that ran, and the totals.
#
# Arguments go to every pytest stage (e.g. `make test ARGS=-x`).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="$root/.venv/bin/python"
results="$(mktemp -d)"  # one JUnit XML per pytest stage, for the slowest tests across stages
trap 'rm -rf "$results"' EXIT

stage() {  # stage NAME COMMAND…: run COMMAND, print its one line, return its status
  local name="$1" start=$SECONDS status=0
  shift
  "$@" || status=$?
  echo "stage $name: $([ "$status" -eq 0 ] && echo passed || echo failed) in $((SECONDS - start)) s"
  return "$status"
}

tests() {  # tests NAME MARKERS: one tier of the suite
  local name="$1" markers="$2" status=0
  "$py" -m pytest -m "$markers" --junitxml="$results/$name.xml" -o junit_family=xunit1 "${@:3}" || status=$?
  [ "$status" -eq 5 ] && status=0  # pytest: no test has these markers
  return "$status"
}

status=0
stage lint bash scripts/lint.sh \
  && stage fast tests fast "not spark and not slow" "$@" \
  && stage jvm tests jvm "spark and not slow" "$@" \
  && stage slow tests slow "slow" "$@" \
  || status=$?
"$py" scripts/slowest_tests.py --top 25 "$results"
exit "$status"
