#!/usr/bin/env bash
# The whole test suite: lint, type check, then pytest. Creates .venv on first use.
# pytest then runs a second time under the newest Python >= 3.12 on the machine that is newer
# than .venv's and that the dependencies install on (its own .venv-pyXY), so that a release of
# JAX, Flax or Orbax that only the newer Python gets is tested too. That run leaves out the
# tests marked slow (the crash trials and long multi-process trials: Roxxel's own logic on the
# same Orbax, already run above), which keeps CI near 20 minutes; ROXXEL_SECOND_PYTEST_ARGS
# replaces `-m "not slow"` (set it to "" for everything). ROXXEL_SECOND_PYTHON=none skips that
# run; ROXXEL_SECOND_PYTHON=/path/to/python picks the interpreter.
ROXXEL_EXTRAS=test
source "$(dirname "$0")/_env.sh"
echo "== ruff"; ruff check src tests benchmarks demo; ruff format --check src tests benchmarks demo
echo "== mypy"; mypy
echo "== pytest ($(python -c 'import sys; print(sys.version.split()[0])'))"; python -m pytest "$@"

second="${ROXXEL_SECOND_PYTHON:-}"
[ "$second" = none ] && exit 0
primary="$(python -c 'import sys; print(sys.version_info[1])')"
candidates=()
if [ -n "$second" ]; then
  candidates=("$second")
else
  for minor in 16 15 14 13 12; do
    [ "$minor" -le "$primary" ] && break
    for python in "python3.$minor" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3."$minor"*/bin/python3."$minor"; do
      if "$python" -c "import sys; assert sys.version_info[:2] == (3, $minor)" 2>/dev/null; then
        candidates+=("$(command -v "$python" 2>/dev/null || echo "$python")")
        break
      fi
    done
  done
fi
for python in "${candidates[@]}"; do
  tag="$("$python" -c 'import sys; print("%d%d" % sys.version_info[:2])')"
  # A Python the dependencies do not support yet (no wheels) is skipped for the next older one.
  if ! PYTHON="$python" ROXXEL_VENV=".venv-py$tag" ROXXEL_EXTRAS="$ROXXEL_EXTRAS" \
      bash -c 'source scripts/_env.sh'; then
    echo "== pytest: the dependencies do not install on $python; trying an older Python"
    continue
  fi
  echo "== pytest ($("$python" -c 'import sys; print(sys.version.split()[0])'), .venv-py$tag: $(
    ".venv-py$tag/bin/python" -c 'import jax, flax, orbax.checkpoint as o
print(f"jax {jax.__version__}, flax {flax.__version__}, orbax {o.__version__}")'))"
  if [ -n "${ROXXEL_SECOND_PYTEST_ARGS+set}" ]; then
    read -r -a second_args <<< "$ROXXEL_SECOND_PYTEST_ARGS"
  else
    second_args=(-m "not slow")
  fi
  exec ".venv-py$tag/bin/python" -m pytest "${second_args[@]}" "$@"
done
echo "== pytest: no Python newer than 3.$primary found for a second run"
