#!/usr/bin/env bash
# Installs Debian's chromium for the browser tests when /usr/bin/chromium is missing.
# playwright drives it through executable_path; `playwright install` would download its
# own browser build, which we never rely on.
set -euo pipefail
CHROMIUM="${TURNSTREAM_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
echo "$CHROMIUM not found; installing chromium" >&2
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation
else
  echo "Cannot install chromium automatically on this system." >&2
  echo "Install Chromium and set TURNSTREAM_CHROMIUM to its path, then run make test again." >&2
  exit 1
fi
[ -x "$CHROMIUM" ] || { echo "$CHROMIUM still missing after install" >&2; exit 1; }
