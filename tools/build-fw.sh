#!/usr/bin/env bash
# Builds the mipsvisor firmware for 64-bit MIPS (mips64el, n64) with -Z build-std.
#
#   tools/build-fw.sh            build: out/mipsvisor.elf, .bin (raw) and .srec (S-records)
#   tools/build-fw.sh clippy     MIPS clippy of the firmware with -D warnings
#
# Toolchain: Debian's rustc-web/cargo-web/rust-web-src (rustc 1.96, sysroot /usr holds the
# library source; RUSTC_BOOTSTRAP=1 is set for this build only), or a rustup nightly that
# has the rust-src component. Override with MIPSVISOR_CARGO=/path/to/cargo.
# Output directory: $MIPSVISOR_OUT or <repo>/out.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${MIPSVISOR_OUT:-$ROOT/out}
TARGET_JSON=$ROOT/mips64el-mipsvisor.json
TARGET_NAME=mips64el-mipsvisor
MODE=${1:-build}
export CARGO_TARGET_DIR=${MIPSVISOR_TARGET_DIR:-$ROOT/target/fw}

has_rust_src() { # $1 = rustc
    local sysroot
    sysroot=$("$1" --print sysroot 2>/dev/null) || return 1
    [ -f "$sysroot/lib/rustlib/src/rust/library/core/Cargo.toml" ]
}

CARGO=()
if [ -n "${MIPSVISOR_CARGO:-}" ]; then
    CARGO=("$MIPSVISOR_CARGO")
    export RUSTC_BOOTSTRAP=1
elif [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] && has_rust_src /usr/bin/rustc; then
    # Debian rustc-web: put /usr/bin first so cargo finds the matching rustc, clippy-driver
    # and rustdoc rather than rustup's shims.
    export PATH=/usr/bin:$PATH RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
    unset RUSTUP_TOOLCHAIN
    CARGO=(/usr/bin/cargo)
elif command -v rustup >/dev/null 2>&1 && rustup run nightly rustc --version >/dev/null 2>&1 \
    && has_rust_src "$(rustup which --toolchain nightly rustc)"; then
    CARGO=(rustup run nightly cargo)
else
    echo "build-fw: no Rust toolchain with library source (rust-src) found." >&2
    echo "  Debian 12: apt-get install rustc-web cargo-web rust-web-src lld" >&2
    echo "  rustup:    rustup toolchain install nightly --component rust-src" >&2
    exit 1
fi

if ! command -v ld.lld >/dev/null 2>&1; then
    echo "build-fw: ld.lld not found (Debian: apt-get install lld)" >&2
    exit 1
fi

ZFLAGS=(-Z build-std=core,alloc,compiler_builtins -Z build-std-features=compiler-builtins-mem
        -Z json-target-spec)
cd "$ROOT"
case "$MODE" in
build)
    # Guest images are embedded by build.rs from out/guests: build them first when the
    # guest workspace is there (MIPSVISOR_SKIP_GUESTS=1 embeds whatever is already built).
    if [ -x "$ROOT/tools/build-guests.sh" ] && [ -z "${MIPSVISOR_SKIP_GUESTS:-}" ]; then
        "$ROOT/tools/build-guests.sh" build >&2
    fi
    "${CARGO[@]}" build -p mipsvisor --release --target "$TARGET_JSON" "${ZFLAGS[@]}"
    mkdir -p "$OUT"
    ELF=$CARGO_TARGET_DIR/$TARGET_NAME/release/mipsvisor
    cp "$ELF" "$OUT/mipsvisor.elf"
    OBJCOPY=""
    for candidate in mips64el-linux-gnuabi64-objcopy llvm-objcopy rust-objcopy; do
        if command -v "$candidate" >/dev/null 2>&1; then OBJCOPY=$candidate; break; fi
    done
    if [ -z "$OBJCOPY" ]; then
        echo "build-fw: no objcopy (Debian: apt-get install binutils-mips64el-linux-gnuabi64)" >&2
        exit 1
    fi
    "$OBJCOPY" -O binary "$OUT/mipsvisor.elf" "$OUT/mipsvisor.bin"
    # YAMON loads S-records at 32-bit KSEG0 addresses: fold the sign-extended ELF
    # addresses (0xffffffff8xxxxxxx) down to 0x8xxxxxxx.
    "$OBJCOPY" -O srec --change-addresses=0x100000000 "$OUT/mipsvisor.elf" "$OUT/mipsvisor.srec"
    echo "build-fw: $OUT/mipsvisor.elf, mipsvisor.bin, mipsvisor.srec"
    ;;
clippy)
    "${CARGO[@]}" clippy -p mipsvisor --release --target "$TARGET_JSON" "${ZFLAGS[@]}" \
        -- -D warnings
    ;;
*)
    echo "usage: tools/build-fw.sh [build|clippy]" >&2
    exit 2
    ;;
esac
