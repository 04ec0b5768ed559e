#!/usr/bin/env bash
# Installs a reference MCP server from npm (@modelcontextprotocol/server-memory) into .run/npm, so the
# tests can prove a third-party server works through the same client as ours. Needs Node.js + npm.
set -euo pipefail
DEST=".run/npm"
PACKAGE="@modelcontextprotocol/server-memory@2026.8.31"
[ -x "$DEST/node_modules/.bin/mcp-server-memory" ] && exit 0
bash "$(dirname "$0")/ensure-npm.sh"
mkdir -p "$DEST"
npm install --silent --no-audit --no-fund --prefix "$DEST" "$PACKAGE"
