#!/usr/bin/env bash
# Makes sure Node.js and npm exist; the npm-installed test counterparts
# (deploy/install-mcp-reference.sh, deploy/install-ag-ui-client.sh) need them.
set -euo pipefail
exec bash "$(dirname "$0")/ensure-command.sh" npm "nodejs npm" node "Node.js 18+ with npm"
