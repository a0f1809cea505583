#!/usr/bin/env bash
# Stages the official Deformable-DETR MSDA CUDA kernel (fundamentalvision/Deformable-DETR,
# Apache-2.0) for a side-by-side benchmark, without any of its code entering this
# repository: .official_msda/ is listed in .git/info/exclude.
#
#   tools/gpu_suite/stage_official_msda.sh REPO          extract into .official_msda/
#   tools/gpu_suite/stage_official_msda.sh --patch SRC DST  copy SRC to DST and patch it
#                                                         for current PyTorch (run_gpu_suite.sh does)
#
# REPO is a clone (or a bare git directory) of the official repository. The
# extracted tree keeps upstream's layout under models/ops/ plus LICENSE and a
# STAGED file naming the commit.
set -euo pipefail

# Upstream predates PyTorch 1.11: Tensor.type(), Tensor.data<T>(), the THC headers
# and AT_ERROR/AT_ASSERTM are deprecated (still compile with warnings in torch 2.x,
# but are on their way out). These edits keep the kernels themselves untouched.
patch_official() {
    local src=$1 dst=$2
    rm -rf "$dst"
    mkdir -p "$dst"
    cp -r "$src"/. "$dst"/
    chmod -R u+w "$dst"
    local ops="$dst/models/ops/src"
    local files=("$ops/ms_deform_attn.h" "$ops/cuda/ms_deform_attn_cuda.cu" "$ops/cuda/ms_deform_im2col_cuda.cuh")
    sed -i \
        -e 's/AT_DISPATCH_FLOATING_TYPES(\([a-z_]*\)\.type()/AT_DISPATCH_FLOATING_TYPES(\1.scalar_type()/g' \
        -e 's/\.type()\.is_cuda()/.is_cuda()/g' \
        -e 's/\.data<\([a-z0-9_]*\)>()/.data_ptr<\1>()/g' \
        -e 's/AT_ASSERTM(/TORCH_CHECK(/g' \
        -e 's/AT_ERROR(\(.*\));/TORCH_CHECK(false, \1);/g' \
        -e 's|#include <THC/THCAtomics.cuh>|#include <ATen/cuda/Atomic.cuh>|' \
        -e 's/"batch(%d) must divide im2col_step(%d)", batch, im2col_step_/"im2col_step (", im2col_step_, ") must divide the batch (", batch, ")"/' \
        "${files[@]}"
    # what is left of the deprecated API (should print nothing)
    grep -n 'THC\|\.type()\|\.data<\|AT_ERROR\|AT_ASSERTM' "${files[@]}" || true
}

if [[ ${1:-} == --patch ]]; then
    patch_official "$2" "$3"
    exit 0
fi

[[ $# == 1 ]] || { echo "usage: $0 PATH/TO/Deformable-DETR (a clone or a bare git directory)" >&2; exit 2; }
git_dir=$(git -C "$1" rev-parse --git-dir)
git_dir=$(cd "$1" && cd "$git_dir" && pwd)
root=$(git rev-parse --show-toplevel)
dest="$root/.official_msda"
exclude="$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.official_msda/' "$exclude" 2>/dev/null || echo '/.official_msda/' >>"$exclude"

commit=$(git --git-dir="$git_dir" rev-parse HEAD)
rm -rf "$dest"
mkdir -p "$dest"
git --git-dir="$git_dir" archive --format=tar "$commit" models/ops/src LICENSE | tar -x -C "$dest"
echo "fundamentalvision/Deformable-DETR $commit (models/ops/src, LICENSE), Apache-2.0" >"$dest/STAGED"
git -C "$root" check-ignore -q "$dest/STAGED" || { echo "error: $dest is not ignored by git" >&2; exit 1; }
echo "staged $(find "$dest" -type f | wc -l) files, $(du -sh "$dest" | cut -f1), into $dest from $commit"
