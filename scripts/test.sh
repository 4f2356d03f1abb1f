#!/usr/bin/env bash
# The whole test suite: lint, type check, then pytest. Creates .venv on first use.
ROXXEL_EXTRAS=test
source "$(dirname "$0")/_env.sh"
echo "== ruff"; ruff check src tests benchmarks demo; ruff format --check src tests benchmarks demo
echo "== mypy"; mypy
echo "== pytest"; exec python -m pytest "$@"
