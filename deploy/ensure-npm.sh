#!/usr/bin/env bash
# Makes sure Node.js and npm exist; the npm-installed test counterparts
# (deploy/install-npm-package.sh, for the MCP reference server and the AG-UI client) need them.
set -euo pipefail
exec bash "$(dirname "$0")/ensure-command.sh" npm "nodejs npm" node "Node.js 18+ with npm"
