#!/usr/bin/env bash
# Installs Debian's chromium for the browser tests when it is missing. playwright drives it through
# executable_path; `playwright install` would download its own browser build, which we never rely on.
set -euo pipefail
exec bash "$(dirname "$0")/ensure-command.sh" "${TURNSTREAM_CHROMIUM:-/usr/bin/chromium}" \
  "chromium fonts-liberation" "" "Chromium and set TURNSTREAM_CHROMIUM to its path"
