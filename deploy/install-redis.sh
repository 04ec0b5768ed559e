#!/usr/bin/env bash
# Installs redis-server when it is missing. Debian starts a service on 6379 after the install; we never use it.
set -euo pipefail
exec bash "$(dirname "$0")/ensure-command.sh" redis-server redis-server redis \
  "Redis 7 or newer so that 'redis-server' is on PATH"
