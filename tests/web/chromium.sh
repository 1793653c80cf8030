#!/usr/bin/env bash
# Headless Chromium for the web view's browser test (Debian's `chromium`).
#
# Usage: tests/web/chromium.sh COMMAND
#   install  apt-get install chromium when no chromium binary is found
#   path     print the binary the tests use (exit 1 when there is none)
#
# The browser test (worker/tests/web_view.rs) finds the binary through
# TICKFLOW_CHROMIUM, which tests/run.sh sets from `path`.
set -euo pipefail

die() { echo "chromium.sh: $*" >&2; exit 1; }

find_binary() {
  local b
  for b in "${TICKFLOW_CHROMIUM:-}" chromium chromium-browser google-chrome; do
    [ -n "$b" ] || continue
    if command -v "$b" >/dev/null 2>&1; then
      command -v "$b"
      return 0
    fi
  done
  return 1
}

install() {
  find_binary >/dev/null && return 0
  command -v apt-get >/dev/null || die "no chromium binary and no apt-get to install Debian's chromium"
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  # Fonts come with the package's dependencies; no recommends (no GPU or
  # audio stacks a headless run never loads).
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends chromium >/dev/null ||
    { "${sudo[@]}" apt-get update -q >/dev/null &&
      DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends chromium >/dev/null; } ||
    die "could not install chromium"
  find_binary >/dev/null || die "chromium installed but no binary found on PATH"
}

cmd="${1:-}"
case "$cmd" in
  install) install ;;
  path) find_binary || die "no chromium: run tests/web/chromium.sh install" ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
