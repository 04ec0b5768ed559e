#!/usr/bin/env bash
# Installs one pinned npm package into its own prefix under .run/, once:
#   install-npm-package.sh DEST PACKAGE@VERSION MARKER   (MARKER: a path under DEST that exists once installed)
# Used by deploy/install-mcp-reference.sh and deploy/install-ag-ui-client.sh.
set -euo pipefail
DEST="$1"
PACKAGE="$2"
[ -e "$DEST/$3" ] && exit 0
bash "$(dirname "$0")/ensure-npm.sh"
mkdir -p "$DEST"
npm install --silent --no-audit --no-fund --prefix "$DEST" "$PACKAGE"
