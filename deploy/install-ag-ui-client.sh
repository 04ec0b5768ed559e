#!/usr/bin/env bash
# Installs the reference AG-UI client from npm (@ag-ui/client, pinned) into .run/ag-ui-client, so the
# tests can run turns through it (tests/agui_client.cjs) exactly as an AG-UI frontend would.
set -euo pipefail
exec bash "$(dirname "$0")/install-npm-package.sh" .run/ag-ui-client "@ag-ui/client@1.0.0" \
  node_modules/@ag-ui/client/package.json
