#!/usr/bin/env bash
# ensure_tools.sh REQUIREMENTS…: the development tools pinned in each file (`name==version` lines)
# installed into this clone's .venv when missing or at another version (pip, from the package index;
# cached by pip after the first time). Used by `make lint` (requirements-lint.txt) and `make test`
# (requirements-test.txt). The tools are not dependencies of the product: they stay out of setup.cfg,
# out of the shared environment and out of its key (scripts/ensure_env.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$root/.venv/bin/python"
for file in "$@"; do
  if ! "$py" - "$root/$file" <<'PY'
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
    echo "installing $(grep -v '^#' "$root/$file" | cut -d'#' -f1 | tr -s ' \n' ' ')into .venv ($file)" >&2
    "$py" -m pip install --quiet --disable-pip-version-check -r "$root/$file"
  fi
done
