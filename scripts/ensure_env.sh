#!/usr/bin/env bash
# Provide .venv in the repository root with the project installed.
#
# The environment itself lives outside the clone, in a cache folder keyed by a hash of the
# pinned dependencies (setup.cfg's requirements + requirements.lock + the Python version), and
# .venv is a link to it.  Fresh clones (CI makes one per run) then reuse a finished environment
# instead of downloading GBs again, and the disk holds one copy per dependency set.
#
#   CATALOGFS_ENV_CACHE   where environments are kept (default: ~/.cache/catalogfs/envs)
#   PYTHON                the interpreter to build with (default: python3.11, else python3)
#
# A real .venv folder made by the user is respected: only the project is (re)installed into it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
cache="${CATALOGFS_ENV_CACHE:-$HOME/.cache/catalogfs/envs}"

key="$("$python_bin" - <<'PY'
import configparser, hashlib, pathlib, sys
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
parts = [sys.version.split()[0], cfg["options"]["install_requires"]]
parts += [f"{k}={v}" for k, v in sorted(cfg["options.extras_require"].items())]
lock = pathlib.Path("requirements.lock")
parts.append(lock.read_text() if lock.exists() else "")
print(hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16])
PY
)"

if [ -d .venv ] && [ ! -L .venv ]; then
  env_dir="$root/.venv"
  echo "ensure_env: using the existing .venv folder" >&2
else
  env_dir="$cache/$key"
  mkdir -p "$cache"
  exec 9>"$cache/$key.lock"
  flock 9
  if [ ! -f "$env_dir/.catalogfs-complete" ]; then
    echo "ensure_env: building the environment $env_dir (first time for this dependency set; torch and pyspark are large)" >&2
    rm -rf "$env_dir"
    "$python_bin" -m venv "$env_dir"
    "$env_dir/bin/python" -m pip install --quiet --upgrade "pip>=24" "setuptools>=68" wheel
    constraints=()
    [ -f requirements.lock ] && constraints=(-c requirements.lock)
    # Install the dependencies only; the project itself is linked in below, per clone.
    deps="$("$python_bin" - <<'PY'
import configparser
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
reqs = cfg["options"]["install_requires"].split("\n") + cfg["options.extras_require"]["dev"].split("\n")
print("\n".join(r.strip() for r in reqs if r.strip() and not r.strip().startswith("#")))
PY
)"
    mapfile -t dep_list <<<"$deps"
    "$env_dir/bin/python" -m pip install --progress-bar off "${constraints[@]}" "${dep_list[@]}"
    "$env_dir/bin/python" -m pip check
    touch "$env_dir/.catalogfs-complete"
  fi
  exec 9>&-
  ln -sfn "$env_dir" .venv
fi

# (Re)install the project itself, editable, when this environment points at another clone.
stamp="$env_dir/.catalogfs-project-root"
if [ "$(cat "$stamp" 2>/dev/null)" != "$root" ]; then
  "$env_dir/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$root"
  echo "$root" >"$stamp"
fi

# spark-submit in this environment gets the Delta jars and this interpreter (see catalogfs/spark.py).
"$env_dir/bin/python" -m catalogfs.spark >/dev/null
