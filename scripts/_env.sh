# Sourced by scripts/demo.sh and scripts/test.sh: create the virtual environment $ROXXEL_VENV
# (default .venv) with $PYTHON (default python3) and install Roxxel with the extras named in
# $ROXXEL_EXTRAS, once per change of pyproject.toml.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${ROXXEL_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.roxxel-installed-${ROXXEL_EXTRAS//,/-}"
HASH="$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  echo "setting up $VENV (extras: $ROXXEL_EXTRAS) ..."
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e ".[$ROXXEL_EXTRAS]"
  echo "$HASH" > "$STAMP"
fi
export PATH="$ROOT/$VENV/bin:$PATH"
