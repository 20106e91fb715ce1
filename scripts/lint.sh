#!/usr/bin/env bash
# `make lint`: ruff over the code, tests, benchmarks and scripts, then mypy on the typed layers
# (settings in pyproject.toml). Both run; the exit status is non-zero when either finds something.
#
# The tools are pinned in requirements-lint.txt and installed into this clone's .venv when missing
# or at another version (pip, from the package index; cached by pip after the first time). They are
# not dependencies of the product, so they stay out of setup.cfg and out of the shared environment
# and its key (scripts/ensure_env.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="$root/.venv/bin/python"

if ! "$py" - requirements-lint.txt <<'PY'
import importlib.metadata as md
import sys

for line in open(sys.argv[1]):
    name, _, want = line.split("#")[0].strip().partition("==")
    if not name:
        continue
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        sys.exit(1)
    if have != want:
        sys.exit(1)
PY
then
  echo "lint: installing $(grep -v '^#' requirements-lint.txt | tr '\n' ' ')into .venv" >&2
  "$py" -m pip install --quiet --disable-pip-version-check -r requirements-lint.txt
fi

status=0
"$py" -m ruff check catalogfs jobs features udfs expectations tests bench scripts || status=1
bash scripts/typecheck.sh || status=1
exit "$status"
