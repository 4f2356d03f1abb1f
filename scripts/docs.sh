#!/usr/bin/env bash
# The docs site: `bash scripts/docs.sh` builds it (strict) into site/; `bash scripts/docs.sh
# serve` serves it with live reload. Creates .venv on first use.
ROXXEL_EXTRAS=docs
source "$(dirname "$0")/_env.sh"
export NO_MKDOCS_2_WARNING=1
if [ "${1:-}" = serve ]; then
  shift
  exec mkdocs serve "$@"
fi
exec mkdocs build --strict "$@"
