#!/usr/bin/env bash
# Checks that `cargo build --release --locked --features cuda` compiles on a machine without a GPU or a system CUDA,
# with NVIDIA's CUDA 13.0 wheels and a stub driver library (the recipe of ../shared/notes/cuda-build.md).
# Run it before changing model or kernel code. About 16 minutes of CPU on two cores and 1.2 GB of wheels the first
# time; the wheels, the stub and the build (its own target folder, so the CPU build's stays warm) are kept in
# $EVOSAM_CUDA_DIR (default ~/.cache/evosam-cuda) and reused by later runs.
#
#   scripts/check-cuda-build.sh            # build; exit 0 when it compiled and linked
#   EVOSAM_CUDA_DIR=/big/disk scripts/check-cuda-build.sh
#
# The binary it makes links libcuda.so.1: with the stub first on LD_LIBRARY_PATH it starts, `validate` works and a
# `device = "cuda"` run exits 2 saying the GPU is not available. Never put the stub on a GPU machine's library path.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
dir="${EVOSAM_CUDA_DIR:-$HOME/.cache/evosam-cuda}"
toolkit="13.0.2" # cudarc 0.19.10 panics on toolkits newer than 13.4; the CUDA 12 wheels have no nvcc
cap="${CUDA_COMPUTE_CAP:-90}"
mkdir -p "$dir"

# 1. The toolkit: nvcc, headers and the runtime libraries, from the wheels.
if [ ! -x "$dir/venv/bin/python" ]; then
    python3 -m venv "$dir/venv"
fi
cu13="$("$dir/venv/bin/python" -c 'import sys; print(sys.prefix)')/lib/python$("$dir/venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')/site-packages/nvidia/cu13"
if [ ! -x "$cu13/bin/nvcc" ]; then
    "$dir/venv/bin/python" -m pip install --quiet \
        "cuda-toolkit[nvcc,crt,nvvm,cudart,cublas,curand,nvrtc,cccl]==$toolkit"
fi
[ -x "$cu13/bin/nvcc" ] || { echo "check-cuda-build: no nvcc under $cu13 after the install" >&2; exit 1; }

# 2. CUDA_HOME: bin and include from the wheels, lib64 with the unversioned names the linker wants, plus a stub
#    libcuda.so.1 (no wheel ships the driver) defining every cu* symbol cudarc declares, each returning 34
#    (CUDA_ERROR_STUB_LIBRARY).
home="$dir/cuda-home"
mkdir -p "$home/lib64"
ln -sfn "$cu13/bin" "$home/bin"
ln -sfn "$cu13/include" "$home/include"
for lib in nvrtc curand cublas cublasLt cudart; do
    so="$(ls "$cu13/lib/lib$lib.so."* 2>/dev/null | sort | head -n 1)"
    [ -n "$so" ] || { echo "check-cuda-build: lib$lib.so.* missing under $cu13/lib" >&2; exit 1; }
    ln -sfn "$so" "$home/lib64/lib$lib.so"
done
cudarc_sys="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10/src/driver/sys/mod.rs | head -n 1)"
if [ ! -f "$home/lib64/libcuda.so.1" ] || [ "$cudarc_sys" -nt "$home/lib64/libcuda.so.1" ]; then
    cargo fetch --locked >/dev/null
    cudarc_sys="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10/src/driver/sys/mod.rs | head -n 1)"
    grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc_sys" | awk '{print "int " $4 "(void) { return 34; }"}' |
        sort -u >"$home/stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$home/lib64/libcuda.so.1" "$home/stub.c"
    ln -sfn libcuda.so.1 "$home/lib64/libcuda.so"
fi

# 3. The build, in its own target folder.
export CUDA_HOME="$home" CUDA_PATH="$home" NVCC="$home/bin/nvcc" CUDA_COMPUTE_CAP="$cap"
export PATH="$home/bin:$PATH" LIBRARY_PATH="$home/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-1}" CARGO_TARGET_DIR="$dir/target"
start=$(date +%s)
cargo build --release --locked --features cuda
echo "check-cuda-build: built $CARGO_TARGET_DIR/release/evosam with --features cuda in $(($(date +%s) - start)) s"

# 4. Smoke: with the stub the binary starts and a CUDA run is refused with a clear message (exit 2).
export LD_LIBRARY_PATH="$home/lib64:$cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$CARGO_TARGET_DIR/release/evosam" --help >/dev/null
spec="$(mktemp -d)"
trap 'rm -rf "$spec"' EXIT
sed -e 's/^device = .*/device = "cuda"/' "$repo/experiments/quickstart.toml" >"$spec/cuda.toml"
set +e
"$CARGO_TARGET_DIR/release/evosam" run "$spec/cuda.toml" --out "$spec/out" --quiet --no-report 2>"$spec/err"
rc=$?
set -e
cat "$spec/err"
if [ "$rc" -ne 2 ]; then
    echo "check-cuda-build: a device = \"cuda\" run with the stub driver exited $rc, expected 2" >&2
    exit 1
fi
echo "check-cuda-build: ok (compiled, linked, and a CUDA run without a GPU is refused with exit 2)"
