#!/usr/bin/env bash
# The main job end to end on embedded defaults: sets up .venv, starts an embedded Kafka-compatible broker
# on 127.0.0.1, a scoring worker and a producer of the bundled sample images, prints each result and a
# summary, then shuts everything down. Extra arguments go to `dangerclip demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/dangerclip demo "$@"
