#!/usr/bin/env bash
# Installs a reference MCP server from npm (@modelcontextprotocol/server-memory) into .run/npm, so the
# tests can prove a third-party server works through the same client as ours. Needs Node.js + npm.
set -euo pipefail
DEST=".run/npm"
PACKAGE="@modelcontextprotocol/server-memory@2026.8.31"
[ -x "$DEST/node_modules/.bin/mcp-server-memory" ] && exit 0
if ! command -v npm >/dev/null 2>&1; then
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
fi
mkdir -p "$DEST"
npm install --silent --no-audit --no-fund --prefix "$DEST" "$PACKAGE"
