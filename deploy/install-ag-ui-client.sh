#!/usr/bin/env bash
# Installs the reference AG-UI client from npm (@ag-ui/client, pinned) into .run/ag-ui-client, so the
# tests can run turns through it (tests/agui_client.cjs) exactly as an AG-UI frontend would.
set -euo pipefail
DEST=".run/ag-ui-client"
PACKAGE="@ag-ui/client@1.0.0"
[ -f "$DEST/node_modules/@ag-ui/client/package.json" ] && exit 0
bash "$(dirname "$0")/ensure-npm.sh"
mkdir -p "$DEST"
npm install --silent --no-audit --no-fund --prefix "$DEST" "$PACKAGE"
