#!/usr/bin/env bash
# Installs a reference MCP server from npm (@modelcontextprotocol/server-memory) into .run/npm, so the
# tests can prove a third-party server works through the same client as ours. Needs Node.js + npm.
set -euo pipefail
exec bash "$(dirname "$0")/install-npm-package.sh" .run/npm "@modelcontextprotocol/server-memory@2026.8.31" \
  node_modules/.bin/mcp-server-memory
