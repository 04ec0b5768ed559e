#!/usr/bin/env bash
# Installs promtool (Debian's `prometheus` package ships it) when it is missing, so the tests can run
# `promtool test rules` on deploy/prometheus/alerts.yml. Only the binary is used; no Prometheus runs.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
echo "promtool not found; installing Debian's prometheus package for it" >&2
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
elif command -v brew >/dev/null 2>&1; then
  brew install prometheus
else
  echo "Cannot install promtool automatically on this system." >&2
  echo "Install Prometheus 2.x so that 'promtool' is on PATH, then run make test again." >&2
  exit 1
fi
command -v promtool >/dev/null 2>&1 || { echo "promtool still not on PATH" >&2; exit 1; }
