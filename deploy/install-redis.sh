#!/usr/bin/env bash
# Installs redis-server when it is missing: apt-get on Debian/Ubuntu, brew on macOS.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
echo "redis-server not found; installing it" >&2
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server
  # Debian starts a service on 6379 after install; we never use it.
elif command -v brew >/dev/null 2>&1; then
  brew install redis
else
  echo "Cannot install redis-server automatically on this system." >&2
  echo "Install Redis 7 or newer so that 'redis-server' is on PATH, then run make again." >&2
  exit 1
fi
command -v redis-server >/dev/null 2>&1 || { echo "redis-server still not on PATH" >&2; exit 1; }
