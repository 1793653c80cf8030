#!/usr/bin/env bash
# Tests of the Argo CD health checks in manifests/argocd: runs health/*.lua in
# gopher-lua the way Argo CD does, against the fixtures in testdata/, and checks
# that argocd-cm-health.yaml embeds exactly those Lua files.
#
#   tests/argocd/run.sh                 run the tests
#   tests/argocd/run.sh -v -run 'TestHealthChecks/StreamQuery'
#   tests/argocd/run.sh -update         rewrite argocd-cm-health.yaml from health/*.lua
#
# Go modules and the build cache live under ${TICKFLOW_CACHE:-~/.cache/tickflow}
# (module cache shared with tests/k8s), so a warm run takes seconds; on an empty
# cache the two modules (gopher-lua, yaml.v3) come from the Go module proxy.
set -euo pipefail
cd "$(dirname "$0")"

command -v go >/dev/null || { echo "go not found: install Go >= 1.22 (https://go.dev/dl/)" >&2; exit 1; }

CACHE="${TICKFLOW_CACHE:-$HOME/.cache/tickflow}"
export GOTOOLCHAIN=local
export GOFLAGS=-mod=readonly
export GOWORK=off
export GOPATH="$CACHE/go"
export GOMODCACHE="$CACHE/go/pkg/mod"
export GOCACHE="$CACHE/go-build-argocd"
mkdir -p "$GOMODCACHE" "$GOCACHE"

# -count=1: the tests read manifests/argocd and charts/tickflow/Chart.yaml,
# outside this Go module, and go test's result cache does not notice when those
# change (it would report a stale "ok (cached)").
exec nice go test -count=1 -p 1 ./... "$@"
