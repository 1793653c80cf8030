#!/usr/bin/env bash
# Creates (or reuses) the Python virtualenv for the tests at
# ${TICKFLOW_CACHE:-$HOME/.cache/tickflow}/venv and installs
# tests/python/requirements.txt into it. Idempotent: does nothing when the venv
# already has exactly these requirements. Prints the venv's python path.
#
# Usage: tests/python/setup.sh            # then: "$(tests/python/setup.sh)" -m pytest tests/python
# Settings: TICKFLOW_CACHE, PYTHON (interpreter to build the venv from;
# default python3.11 when present, else python3, which must be 3.9+).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REQS="$HERE/requirements.txt"
VENV="${TICKFLOW_CACHE:-$HOME/.cache/tickflow}/venv"
STAMP="$VENV/.tickflow-requirements.sha256"

if [ -z "${PYTHON:-}" ]; then
  if command -v python3.11 >/dev/null && python3.11 -c '' 2>/dev/null; then PYTHON=python3.11; else PYTHON=python3; fi
fi

want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c '' 2>/dev/null \
    && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
  echo "$VENV/bin/python"
  exit 0
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
  || { echo "setup.sh: $PYTHON is older than Python 3.9" >&2; exit 1; }
if ! [ -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi
log="$(mktemp)"
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQS" >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  echo "setup.sh: pip could not install $REQS" >&2
  exit 1
fi
rm -f "$log"
echo "$want" >"$STAMP"
echo "$VENV/bin/python"
