#!/usr/bin/env bash
# Provide .venv in the repository root: this clone's own small virtualenv, layered on a shared one.
#
# The heavy dependencies (torch, pyspark, MLflow …) live in one environment outside the clone, in a
# cache folder keyed by a hash of the pinned dependencies (setup.cfg's requirements +
# requirements.lock + the Python version). Fresh clones (CI makes one per run) reuse a finished one
# instead of downloading GBs again; it is written only when it is built, never by a clone.
#
# .venv is a virtualenv of this clone (a few MB) whose site-packages adds the shared one's (a .pth
# file). Everything a clone writes stays in it:
#   - the project, installed editable: .venv/bin/python and .venv/bin/catalogfs run this clone's code;
#   - spark-defaults.conf in .venv/spark-conf (SPARK_CONF_DIR, set for every .venv Python and by the
#     .venv/bin/spark-submit, pyspark … wrappers): Delta and this clone's Python for spark-submit;
#   - the other console scripts of the shared environment (pytest, mlflow …), run by .venv's Python.
#
#   CATALOGFS_ENV_CACHE   where shared environments are kept (default: ~/.cache/catalogfs/envs)
#   PYTHON                the interpreter to build with (default: python3.11, else python3)
#
# A real .venv folder made by the user is respected: only the project is (re)installed into it.
# A .venv that is a link (how earlier versions of this script shared the environment) is replaced
# by the layered virtualenv; the environment it pointed to is left as it is.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
cache="${CATALOGFS_ENV_CACHE:-$HOME/.cache/catalogfs/envs}"
venv="$root/.venv"
layer_stamp="$venv/.catalogfs-layer"
# pyspark's launcher scripts (bash, in the shared environment's bin): wrapped in .venv/bin
spark_launchers=(spark-submit pyspark spark-shell spark-sql spark-class run-example beeline sparkR
                 spark-connect-shell spark-pipelines)

# One ensure_env at a time per clone (make test and make demo started together): lock this script.
exec 8<"$root/scripts/ensure_env.sh"
flock 8

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

site_packages() {  # the purelib folder of the interpreter $1
  "$1" -c 'import sysconfig; print(sysconfig.get_path("purelib"))'
}

install_project() {  # editable, into the environment of the interpreter $1, when not already from this clone
  local stamp="$2" want_install  # this clone, and its packaging (setup.cfg maps the folders into the package)
  want_install="$root $(sha256sum "$root/setup.cfg" | cut -c1-16)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want_install" ]; then
    local out  # setuptools' warnings about setup.cfg only when the install fails
    out="$("$1" -m pip install --quiet --no-deps --no-build-isolation -e "$root" 2>&1)" || { echo "$out" >&2; return 1; }
    echo "$want_install" >"$stamp"
  fi
}

if [ -d "$venv" ] && [ ! -L "$venv" ] && [ ! -f "$layer_stamp" ]; then
  echo "ensure_env: using the existing .venv folder" >&2
  install_project "$venv/bin/python" "$venv/.catalogfs-project-root"
  # its own Spark conf folder (pyspark/conf inside it) belongs to this clone
  "$venv/bin/python" -m catalogfs.spark >/dev/null
  exit 0
fi

# 1. The shared environment: the dependencies only, built once per dependency set.
shared="$cache/$key"
mkdir -p "$cache"
exec 9>"$cache/$key.lock"
flock 9
if [ ! -f "$shared/.catalogfs-complete" ]; then
  echo "ensure_env: building the shared environment $shared (first time for this dependency set; torch and pyspark are large)" >&2
  rm -rf "$shared"
  "$python_bin" -m venv "$shared"
  "$shared/bin/python" -m pip install --quiet --upgrade "pip>=24" "setuptools>=68" wheel
  constraints=()
  [ -f requirements.lock ] && constraints=(-c requirements.lock)
  deps="$("$python_bin" - <<'PY'
import configparser
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
reqs = cfg["options"]["install_requires"].split("\n") + cfg["options.extras_require"]["dev"].split("\n")
print("\n".join(r.strip() for r in reqs if r.strip() and not r.strip().startswith("#")))
PY
)"
  mapfile -t dep_list <<<"$deps"
  "$shared/bin/python" -m pip install --progress-bar off "${constraints[@]}" "${dep_list[@]}"
  "$shared/bin/python" -m pip check
  touch "$shared/.catalogfs-complete"
fi
exec 9>&-

# 2. This clone's layer: rebuilt when missing, when .venv is an old link, or when it was made for
#    another shared environment or another folder (a moved clone).
want="shared=$shared
root=$root"
if [ -L "$venv" ]; then
  echo "ensure_env: replacing the .venv link ($(readlink "$venv")) by this clone's own .venv" >&2
  rm -f "$venv"  # the link only; the environment it pointed to stays as it is
elif [ -f "$layer_stamp" ] && [ "$(cat "$layer_stamp")" != "$want" ]; then
  echo "ensure_env: rebuilding .venv (made for another shared environment or folder)" >&2
  rm -rf "$venv"
fi
if [ ! -d "$venv" ]; then
  echo "ensure_env: creating .venv on the shared environment $shared" >&2
  "$shared/bin/python" -m venv --without-pip "$venv"
  echo building >"$layer_stamp"  # ours (not a user's folder) even if this run stops halfway
  mkdir -p "$venv/spark-conf"
  # A path line adds the shared site-packages after .venv's own (the shared one's .pth files are
  # not run, so a project installed there by an earlier version of this script stays invisible);
  # the import line points Spark started from any .venv Python at this clone's spark-defaults.conf.
  cat >"$(site_packages "$venv/bin/python")/_catalogfs_shared_env.pth" <<EOF
$(site_packages "$shared/bin/python")
import os; os.environ.setdefault("SPARK_CONF_DIR", "$venv/spark-conf")
EOF
  install_project "$venv/bin/python" "$venv/.catalogfs-project-root"
  # pyspark's launchers: the shared ones, with this clone's Spark conf and Python
  for name in "${spark_launchers[@]}"; do
    [ -f "$shared/bin/$name" ] || continue
    cat >"$venv/bin/$name" <<EOF
#!/usr/bin/env bash
# pyspark's $name from the shared environment, with this clone's spark-defaults.conf and Python.
export SPARK_HOME="\${SPARK_HOME:-$(site_packages "$shared/bin/python")/pyspark}"
export SPARK_CONF_DIR="\${SPARK_CONF_DIR:-$venv/spark-conf}"
export PYSPARK_PYTHON="\${PYSPARK_PYTHON:-$venv/bin/python}"
exec "$shared/bin/$name" "\$@"
EOF
    chmod +x "$venv/bin/$name"
  done
  # The shared environment's console scripts (pytest, mlflow …), run by this clone's Python.
  for script in "$shared"/bin/*; do
    name="$(basename "$script")"
    [ -f "$script" ] && [ ! -e "$venv/bin/$name" ] || continue
    [ "$(head -n 1 "$script")" = "#!$shared/bin/python" ] || continue
    { echo "#!$venv/bin/python"; tail -n +2 "$script"; } >"$venv/bin/$name"
    chmod +x "$venv/bin/$name"
  done
  "$venv/bin/python" -m pip check >/dev/null
  (cd / && "$venv/bin/python" - "$root" <<'PY'
import pathlib, sys
import catalogfs, catalogfs.jobs
for module in (catalogfs, catalogfs.jobs):
    assert pathlib.Path(module.__file__).is_relative_to(sys.argv[1]), f"{module.__name__} from {module.__file__}"
PY
  )
  echo "$want" >"$layer_stamp"
fi
install_project "$venv/bin/python" "$venv/.catalogfs-project-root"  # again when setup.cfg changed

# 3. spark-submit from this clone gets the Delta jars and this clone's Python (see catalogfs/spark.py).
SPARK_CONF_DIR="$venv/spark-conf" "$venv/bin/python" -m catalogfs.spark >/dev/null
