#!/usr/bin/env bash
# Rebuilds ebpf-steering/corelane-steering.bpf.o from ebpf-steering/program
# with stable rustc (RUSTC_BOOTSTRAP=1 for -Z build-std=core) and
# bpf-linker 0.13.0, which it installs if absent.
#
#   ebpf-steering/build-program.sh          rebuild and replace the object
#   ebpf-steering/build-program.sh --check  rebuild and fail if it differs
#
# bpf-linker is built against rustc's own libLLVM (the LLVM major must equal
# rustc's); set LLVM_PREFIX=/usr/lib/llvm-22 to use Debian's llvm-22-dev.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
object="$here/corelane-steering.bpf.o"
check=0
[[ "${1:-}" == "--check" ]] && check=1

sysroot="$(rustc --print sysroot)"
if ! command -v bpf-linker >/dev/null 2>&1 || [[ "$(bpf-linker --version 2>/dev/null)" != *"0.13.0"* ]]; then
    echo "build-program: installing bpf-linker 0.13.0 (a few minutes)" >&2
    if [[ -z "${LLVM_PREFIX:-}" ]]; then
        # The shared object itself (`libLLVM.so.22.1-rust-...`), not the
        # linker script some toolchains ship beside it
        # (`libLLVM-22-rust-....so`, `INPUT(...)`), which names it relative
        # to the sysroot and so cannot be linked from here.
        libllvm="$(ls "$sysroot"/lib/libLLVM.so.* 2>/dev/null | head -n1)"
        [[ -n "$libllvm" ]] || libllvm="$(ls -S "$sysroot"/lib/libLLVM*.so* | head -n1)"
        prefix="$(mktemp -d)"
        mkdir -p "$prefix/lib"
        ln -s "$libllvm" "$prefix/lib/libLLVM.so"
        export LLVM_PREFIX="$prefix"
        export RUSTFLAGS="-C link-arg=-Wl,-rpath,$sysroot/lib"
    fi
    cargo install bpf-linker@0.13.0 --locked
    unset RUSTFLAGS
fi
rustup component list --installed 2>/dev/null | grep -q '^rust-src' || rustup component add rust-src

# Reproducible: no debug info, paths inside the build remapped, one codegen
# unit, fixed profile whatever the workspace's release profile says.
target_dir="$root/target/bpf-program"
export RUSTC_BOOTSTRAP=1
export CARGO_PROFILE_RELEASE_PANIC=abort
export CARGO_PROFILE_RELEASE_DEBUG=false
export CARGO_PROFILE_RELEASE_LTO=true
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
export CARGO_PROFILE_RELEASE_OPT_LEVEL=3
export CARGO_ENCODED_RUSTFLAGS="--remap-path-prefix=$root=/corelane"$'\x1f'"--remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"$'\x1f'"--remap-path-prefix=$sysroot=/rustc"
cd "$root"
cargo build --release --locked -p corelane-steering-program \
    --target bpfel-unknown-none -Z build-std=core --target-dir "$target_dir"
built="$target_dir/bpfel-unknown-none/release/corelane-steering-program"

if [[ $check == 1 ]]; then
    if cmp -s "$built" "$object"; then
        echo "build-program: the committed object matches its source ($(sha256sum <"$object" | cut -c1-16))"
    else
        echo "build-program: ebpf-steering/corelane-steering.bpf.o differs from what its source builds to;" >&2
        echo "  run ebpf-steering/build-program.sh and commit the object" >&2
        exit 1
    fi
else
    cp "$built" "$object"
    echo "build-program: wrote $object ($(stat -c %s "$object") bytes, sha256 $(sha256sum <"$object" | cut -c1-16))"
fi
