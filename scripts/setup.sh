#!/usr/bin/env bash
# Creates .venv and installs DangerCLIP with the extras each command needs.
#
#   scripts/setup.sh            everything: serve + train + pseudomask + dev (what the tests need)
#   scripts/setup.sh serve,index,qdrant  the serving half only (onnxruntime, kafka-python, the match stage; no torch)
#
# Re-running is cheap: the install is skipped while pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-serve,train,pseudomask,dev}"
venv="${DANGERCLIP_VENV:-.venv}"
py="${PYTHON:-python3}"

stamp="$venv/.dangerclip-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
log="$venv/setup.log"
echo "setup: installing DangerCLIP [$extras] into $venv (a few minutes the first time; log: $log)"
: > "$log"
pip() {
  if ! "$venv/bin/python" -m pip "$@" >> "$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "setup: pip $* failed; full log in $log" >&2
    return 1
  fi
}
pip install -q --upgrade pip setuptools wheel

if [[ ",$extras," == *",train,"* || ",$extras," == *",pseudomask,"* ]]; then
  # torch first, on its own: the newest release allowed here (2.14.1 where pip is capped, which lies on
  # this disk and installs without a download); anywhere else pip picks the newest release.
  pip install -q "torch>=2.3,<=2.14.1" "torchvision>=0.18,<=0.29.1"
fi
pip install -q -e ".[${extras}]"
echo "$want" > "$stamp"
echo "setup: $venv ready with extras [$extras]"
