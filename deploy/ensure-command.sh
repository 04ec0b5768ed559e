#!/usr/bin/env bash
# Makes sure a command (a name on PATH or an absolute path) exists, installing the system package
# that ships it when it is missing: apt-get on Debian/Ubuntu, brew on macOS; elsewhere it says what
# to install and fails. The install-*.sh scripts name what they need and call this.
#
#   ensure-command.sh COMMAND "DEBIAN PACKAGES" BREW_FORMULA "what to install by hand"
set -euo pipefail
command_name=$1 debian_packages=$2 brew_formula=$3 by_hand=$4
command -v "$command_name" >/dev/null 2>&1 && exit 0
echo "$command_name not found; installing it" >&2
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086 # the package list is meant to split
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $debian_packages
elif [ -n "$brew_formula" ] && command -v brew >/dev/null 2>&1; then
  brew install "$brew_formula"
else
  echo "Cannot install $command_name automatically on this system." >&2
  echo "Install $by_hand, then run make again." >&2
  exit 1
fi
command -v "$command_name" >/dev/null 2>&1 || { echo "$command_name still missing after the install" >&2; exit 1; }
