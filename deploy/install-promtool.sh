#!/usr/bin/env bash
# Installs promtool (Debian's `prometheus` package ships it) when it is missing, so the tests can run
# `promtool test rules` on deploy/prometheus/alerts.yml. Only the binary is used; no Prometheus runs.
set -euo pipefail
exec bash "$(dirname "$0")/ensure-command.sh" promtool prometheus prometheus \
  "Prometheus 2.x so that 'promtool' is on PATH"
