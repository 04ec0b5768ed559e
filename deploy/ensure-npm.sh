#!/usr/bin/env bash
# Makes sure Node.js and npm exist (apt-get on Debian/Ubuntu, brew on macOS); the npm-installed test
# counterparts (deploy/install-mcp-reference.sh, deploy/install-ag-ui-client.sh) need them.
set -euo pipefail
command -v npm >/dev/null 2>&1 && exit 0
echo "npm not found; installing Node.js and npm" >&2
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm
elif command -v brew >/dev/null 2>&1; then
  brew install node
else
  echo "Install Node.js 18+ with npm, then run make again." >&2
  exit 1
fi
