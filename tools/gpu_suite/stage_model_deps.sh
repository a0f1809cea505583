#!/usr/bin/env bash
# Stages into .model_deps/ what tools/benchmark_model.py needs besides torch, for a
# GPU machine without network access: the pure-Python packages, copied from this
# checkout's .venv (or $PYTHON's site-packages), and a cp312 wheel of pycocotools
# (compiled). Copy .model_deps/ along with the checkout; run_gpu_suite.sh puts it
# on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
DEST=.model_deps
PURE_PACKAGES="detectron2 fvcore iopath omegaconf antlr4 yacs termcolor hydra"

rm -rf "$DEST"
mkdir -p "$DEST"
grep -qxF "/$DEST/" .git/info/exclude 2>/dev/null || echo "/$DEST/" >> .git/info/exclude
site=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for package in $PURE_PACKAGES; do
  cp -r "$site/$package" "$DEST/"
done
find "$DEST" -name __pycache__ -type d -prune -exec rm -rf {} +
"$PYTHON" -m pip install --quiet --target "$DEST" --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  pycocotools==2.0.11
du -sh "$DEST"
git check-ignore -q "$DEST" && echo "$DEST is ignored by git"
