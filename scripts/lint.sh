#!/usr/bin/env bash
# `make lint`: ruff over the code, tests, benchmarks and scripts, then mypy on the typed layers
# (settings in pyproject.toml). Both run; the exit status is non-zero when either finds something.
#
# The tools are pinned in requirements-lint.txt and installed into this clone's .venv when missing
# or at another version (scripts/ensure_tools.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="$root/.venv/bin/python"

bash scripts/ensure_tools.sh requirements-lint.txt

status=0
"$py" -m ruff check catalogfs jobs features udfs expectations tests bench scripts || status=1
bash scripts/typecheck.sh || status=1
exit "$status"
