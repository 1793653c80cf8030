#!/usr/bin/env bash
# Keeps the shared build cache from filling the disk: every code change
# leaves a new test executable (hundreds of MB with debug info) and new
# workspace libraries in $CARGO_TARGET_DIR/release/deps beside the old ones,
# and cargo never removes them. For each test executable and each library of
# the workspace (tickflow_*) this keeps the two newest builds (the suite's
# feature set and the plain one) and deletes the older ones, so the next
# build rebuilds nothing. Dependencies are left alone. Prints what it freed.
#
# Usage: tests/prune_cache.sh [TARGET_DIR]   (default $CARGO_TARGET_DIR)
set -euo pipefail

deps="${1:-${CARGO_TARGET_DIR:?}}/release/deps"
[ -d "$deps" ] || exit 0
python3 - "$deps" <<'PY'
import os, re, sys
from collections import defaultdict

deps = sys.argv[1]
workspace = {"tickflow_worker", "tickflow_engine", "tickflow_operator", "tickflow_crds"}
groups = defaultdict(list)
for f in os.listdir(deps):
    m = re.fullmatch(r"(lib)?([A-Za-z0-9_]+)-[0-9a-f]{16}(\.[a-z]+)?", f)
    if not m:
        continue
    lib, name, ext = m.groups()
    path = os.path.join(deps, f)
    is_test_exe = ext is None and not lib and os.access(path, os.X_OK)
    if not (is_test_exe or (lib and name in workspace and ext in (".rlib", ".rmeta"))):
        continue
    groups[(name, ext, bool(lib))].append((os.stat(path).st_mtime, path))
freed = 0
for files in groups.values():
    for _, path in sorted(files, reverse=True)[2:]:
        freed += os.stat(path).st_size
        os.remove(path)
        d = re.sub(r"(\.[a-z]+)?$", ".d", path, count=1)
        if os.path.exists(d):
            os.remove(d)
print(f"prune_cache.sh: freed {freed >> 20} MiB of superseded build outputs in {deps}")
PY
