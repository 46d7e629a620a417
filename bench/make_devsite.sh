#!/usr/bin/env bash
# Builds `.devsite/site.tar.xz`, what bench/exp_on_card.sh carries to the GPU machine: every
# package the card lacks, installed, in one xz tarball that fits one device call with the repo.
#
#   bash bench/make_devsite.sh WHEEL_DIR...   # e.g. .whl1 .whl2
#
# The wheels: the device tool's README recipe (`pip download --no-deps --only-binary=:all:
# --python-version 3.12 --platform manylinux...`) for the packages ../shared/notes/device-gpu.md
# lists (ray 2.60 with grpcio, optuna, tyro and their dependencies; the card has JAX, Flax,
# Optax, numpy, scipy, pandas, matplotlib). Installed with --no-deps into a folder, ray's rllib,
# serve and llm removed (the service never imports them), ELF binaries stripped of symbols, then
# xz: 36 MB from 236 MB installed (2026-12-07). Check it here before a device call: a Python
# 3.12 with PYTHONPATH=<folder> starts Ray and runs a task.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 WHEEL_DIR..." >&2; exit 2; }
site=/tmp/devsite
rm -rf "$site" && mkdir -p "$site" .devsite
wheels=(); for d in "$@"; do wheels+=("$d"/*.whl); done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
  "${wheels[@]}"
rm -rf "$site/ray/rllib" "$site/ray/serve" "$site/ray/llm"
find "$site" -type f \( -name '*.so*' -o -perm -u+x \) -print0 \
  | while IFS= read -r -d '' f; do
      file "$f" | grep -q ELF && strip --strip-unneeded "$f" 2>/dev/null || true
    done
tar -C /tmp -cf - devsite | xz -T2 -6 > .devsite/site.tar.xz
grep -qx '/.devsite/' .git/info/exclude || echo /.devsite/ >> .git/info/exclude
echo ".devsite/site.tar.xz: $(du -h .devsite/site.tar.xz | cut -f1)"
