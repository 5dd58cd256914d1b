#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# System tools some tests need (promtool, helm, ...), when this machine lacks them.
[ -x scripts/setup-system.sh ] && scripts/setup-system.sh
exec .venv/bin/python -m pytest "$@"
