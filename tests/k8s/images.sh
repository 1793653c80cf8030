#!/usr/bin/env bash
# The tickflow-worker and tickflow-operator images, from the release binaries,
# for the real test node (no Docker engine here): tests/k8s/image.py writes
# each as a docker-archive whose config comes from worker/Dockerfile and
# operator/Dockerfile, with the binary stripped of its debug info.
#
# Usage: tests/k8s/images.sh build [OUT_DIR]   write OUT_DIR/{worker,operator}.tar
#                                              and print the image names
#        tests/k8s/images.sh load  [OUT_DIR]   build, then import them into the
#                                              real node (controlplane.sh load-image)
# Settings: CARGO_TARGET_DIR (default ~/.cache/tickflow/target), TICKFLOW_IMAGE_TAG
# (default test).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-${TICKFLOW_CACHE:-$HOME/.cache/tickflow}/target}"
TAG="${TICKFLOW_IMAGE_TAG:-test}"
OUT="${2:-${TMPDIR:-/tmp}/tickflow-images}"

build() {
  mkdir -p "$OUT"
  local c
  for c in worker operator; do
    local bin="$TARGET/release/tickflow-$c"
    [ -x "$bin" ] || { echo "images.sh: $bin missing (cargo build --release)" >&2; exit 1; }
    # Only rebuilt when the binary changed.
    if [ ! -s "$OUT/$c.tar" ] || [ "$bin" -nt "$OUT/$c.tar" ]; then
      objcopy --strip-debug "$bin" "$OUT/tickflow-$c"
      python3 "$HERE/image.py" build "$REPO/$c/Dockerfile" "$OUT/tickflow-$c" \
        "ghcr.io/tickflow/tickflow-$c:$TAG" "$OUT/$c.tar" >&2
      rm -f "$OUT/tickflow-$c"
    fi
    echo "ghcr.io/tickflow/tickflow-$c:$TAG"
  done
}

case "${1:-}" in
  build) build ;;
  load)
    build >/dev/null
    "$HERE/controlplane.sh" load-image "$OUT/worker.tar" "$OUT/operator.tar"
    ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
