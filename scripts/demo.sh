#!/usr/bin/env bash
# The demo: train on scikit-learn digits, get preempted by SIGTERM, resume, compare, list.
# Creates .venv on first use. Arguments go to demo/train_digits.py (e.g. --steps 400).
ROXXEL_EXTRAS=demo,grain
source "$(dirname "$0")/_env.sh"
exec python demo/train_digits.py "$@"
