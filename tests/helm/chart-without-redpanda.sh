#!/usr/bin/env bash
# Usage: tests/helm/chart-without-redpanda.sh [DEST]
#
# Copies charts/tickflow to DEST (default: a new temp dir + /tickflow) with the
# Redpanda dependency removed from Chart.yaml, and prints DEST's absolute path.
#
# Why: charts/tickflow declares an optional dependency on the official Redpanda
# chart (https://charts.redpanda.com). Helm wants every declared dependency in
# the chart's charts/ directory, even a disabled one: without it `helm
# template` and `helm install` refuse to run ("found in Chart.yaml, but missing
# in charts/ directory: redpanda") and `helm lint --strict` fails. This machine
# (and CI) has no internet access, so `helm dependency build` cannot download
# the Redpanda chart. The copy is the same chart minus that (disabled by
# default) dependency: same templates, values, schema and crds/.
#
# DEST must not exist or be an empty directory. Its last path component should
# be "tickflow" (the chart name), as in the default.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
src="$repo/charts/tickflow"

dest="${1:-}"
if [[ -z "$dest" ]]; then
  dest="$(mktemp -d "${TMPDIR:-/tmp}/tickflow-chart.XXXXXX")/tickflow"
fi
if [[ -e "$dest" && ( ! -d "$dest" || -n "$(ls -A "$dest")" ) ]]; then
  echo "chart-without-redpanda.sh: $dest exists and is not an empty directory" >&2
  exit 2
fi
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"

# Copy the chart, but not downloaded dependencies or their lock file.
tar -C "$src" --exclude='./charts' --exclude='./Chart.lock' -cf - . | tar -C "$dest" -xf -

# Drop the top-level `dependencies:` block (up to the next top-level key) and
# the comment block right above it.
awk '
  /^dependencies:/ { skipping = 1; comments = ""; next }
  skipping && /^[^[:space:]#]/ { skipping = 0 }
  skipping { next }
  /^#/ { comments = comments $0 "\n"; next }
  { printf "%s", comments; comments = ""; print }
  END { printf "%s", comments }
' "$src/Chart.yaml" > "$dest/Chart.yaml"

if grep -q '^dependencies:' "$dest/Chart.yaml" || grep -q 'charts.redpanda.com' "$dest/Chart.yaml"; then
  echo "chart-without-redpanda.sh: could not remove the dependency from $dest/Chart.yaml" >&2
  exit 1
fi

echo "$dest"
