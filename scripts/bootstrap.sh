#!/usr/bin/env bash
# Create or update .venv from the pinned lock files. Idempotent: a stamp holding the hash of
# the lock files makes a second run a no-op. Needs only Python 3.11 and the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi
[ -n "$PYTHON" ] || { echo "error: Python 3.11 not found (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$version" = "3.11" ] || { echo "error: $PYTHON is Python $version; this project needs 3.11 (set PYTHON=…)" >&2; exit 1; }
command -v java >/dev/null 2>&1 || echo "warning: java not found; Spark jobs need Java 17" >&2

# The browser tests drive Debian's Chromium (Playwright's own browser download cannot work
# offline). Installed here when this runs as root with apt (CI, the dev machines); elsewhere
# say how. MLP_CHROMIUM may point at another Chromium/Chrome binary.
if [ -z "${MLP_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Debian's chromium for the browser tests…"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 &&
        apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; }; } ||
      echo "warning: apt-get could not install chromium; the browser tests will fail" >&2
  else
    echo "warning: chromium not found; the browser tests need it: sudo apt-get install chromium" \
      "(or set MLP_CHROMIUM=/path/to/chromium)" >&2
  fi
fi

stamp_value=$(cat requirements-lock.txt requirements-dev-lock.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)
stamp_file=$VENV/.mlpipeline-installed
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp_value" ] && [ -x $VENV/bin/airflow ]; then
  exit 0
fi

[ -x $VENV/bin/python ] || "$PYTHON" -m venv $VENV
if command -v uv >/dev/null 2>&1; then
  UV=$(command -v uv)
else
  [ -x $VENV/bin/uv ] || $VENV/bin/python -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
  UV=$VENV/bin/uv
fi
echo "Installing pinned dependencies into $VENV (first time: a few minutes)…"
"$UV" pip install --quiet --python $VENV/bin/python -r requirements-lock.txt -r requirements-dev-lock.txt
# apache-airflow-providers-apache-spark pulls pyspark-client, which writes into the same
# pyspark/ package directory: reinstall pyspark last so the full distribution's files win.
"$UV" pip install --quiet --python $VENV/bin/python --reinstall --no-deps \
  "$(grep -E '^pyspark==' requirements-lock.txt)"
# Bytecode for the whole site-packages, once (uv writes none by default). Where
# PYTHONDONTWRITEBYTECODE is set (CI, these machines) no process ever writes it, so every
# Airflow service, task, CLI call and test compiled the libraries again at each import
# (measured: `import airflow.sdk` 5.6 s -> 2.3 s, great_expectations 14.0 -> 5.5 s). A few
# vendored files are not Python 3: compileall reports them and goes on.
echo "Compiling the libraries' bytecode (once)…"
site=$($VENV/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
$VENV/bin/python -m compileall -q -j 0 "$site" >/dev/null 2>&1 || true
# Make the pipeline package importable (like an editable install, without a build step).
echo "$PWD/include" > "$site/mlpipeline.pth"
echo "$stamp_value" > "$stamp_file"
echo "Environment ready: $VENV"
