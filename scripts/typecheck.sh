#!/usr/bin/env bash
# mypy on the typed layers (pyproject.toml [tool.mypy]), as the package is installed: `catalogfs.udfs.x`
# is udfs/x.py. The repository's jobs/, features/, udfs/ and expectations/ folders are mapped into the
# package by setup.cfg's package_dir, which the editable install does with an import hook that mypy
# cannot follow; so mypy runs in a tree of links that has the package's layout (.venv/typecheck,
# rebuilt each run, its cache kept), and its messages name the repository's files.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tree="$root/.venv/typecheck"
rm -rf "$tree/catalogfs"
mkdir -p "$tree/catalogfs"
for file in "$root"/catalogfs/*.py "$root/catalogfs/py.typed"; do
  ln -s "$file" "$tree/catalogfs/"
done
for folder in jobs features udfs expectations; do
  ln -s "$root/$folder" "$tree/catalogfs/$folder"
done
cd "$tree"
"$root/.venv/bin/python" -m mypy --config-file "$root/pyproject.toml" -p catalogfs 2>&1 \
  | sed -E 's#^catalogfs/(jobs|features|udfs|expectations)/#\1/#'
