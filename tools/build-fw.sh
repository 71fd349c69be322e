#!/usr/bin/env bash
# Builds the mipsvisor firmware for 64-bit MIPS (mips64el, n64) with -Z build-std.
#
#   tools/build-fw.sh            build: out/mipsvisor.elf, .bin (raw) and .srec (S-records),
#                                and out/ejtag-vector.bin (the debug vector stub)
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

# shellcheck source=tools/lib/toolchain.sh
. "$ROOT/tools/lib/toolchain.sh"
mipsvisor_select_toolchain build-fw || exit 1
ZFLAGS=("${MIPSVISOR_ZFLAGS[@]}")
cd "$ROOT"
# Both modes compile the firmware, and build.rs refuses to without the images and layouts it
# embeds: make those first.
case "$MODE" in
build | clippy) ;;
*)
    echo "usage: tools/build-fw.sh [build|clippy]" >&2
    exit 2
    ;;
esac
# Guest images are embedded by build.rs from out/guests: build them first when the
# guest workspace is there (MIPSVISOR_SKIP_GUESTS=1 embeds whatever is already built).
if [ -x "$ROOT/tools/build-guests.sh" ] && [ -z "${MIPSVISOR_SKIP_GUESTS:-}" ]; then
    # Without names build-guests.sh builds every guest crate it finds.
    if compgen -G "$ROOT/guests/*/src/main.rs" >/dev/null; then
        "$ROOT/tools/build-guests.sh" build >&2
    fi
fi
# VM layouts (configs/*.dts -> out/configs/*.dtb) are embedded the same way.
# A missing dtc fails the build (build-configs.sh says so): a firmware without its
# layouts would fall back to the built-in default without a word.
"$ROOT/tools/build-configs.sh" >&2
case "$MODE" in
build)
    "${CARGO[@]}" build -p mipsvisor --release --target "$TARGET_JSON" "${ZFLAGS[@]}"
    mkdir -p "$OUT"
    ELF=$CARGO_TARGET_DIR/$TARGET_NAME/release/mipsvisor
    OBJCOPY=""
    for candidate in mips64el-linux-gnuabi64-objcopy llvm-objcopy rust-objcopy; do
        if command -v "$candidate" >/dev/null 2>&1; then OBJCOPY=$candidate; break; fi
    done
    if [ -z "$OBJCOPY" ]; then
        echo "build-fw: no objcopy (Debian: apt-get install binutils-mips64el-linux-gnuabi64)" >&2
        exit 1
    fi
    # shellcheck source=tools/lib/update.sh
    . "$ROOT/tools/lib/update.sh"
    SCRATCH=$(mktemp -d)
    trap 'rm -rf "$SCRATCH"' EXIT
    cp "$ELF" "$SCRATCH/mipsvisor.elf"
    "$OBJCOPY" -O binary "$ELF" "$SCRATCH/mipsvisor.bin"
    # The EJTAG debug stub for the boot ROM's debug vector (src/arch/mips/debug_vector.rs);
    # qemu-run.sh loads it at physical 0x1fc00480.
    "$OBJCOPY" -O binary --only-section=.ejtag_vector "$ELF" "$SCRATCH/ejtag-vector.bin"
    # YAMON loads S-records at 32-bit KSEG0 addresses: fold the sign-extended ELF
    # addresses (0xffffffff8xxxxxxx) down to 0x8xxxxxxx.
    "$OBJCOPY" -O srec --change-addresses=0x100000000 "$ELF" "$SCRATCH/mipsvisor.srec"
    for file in mipsvisor.elf mipsvisor.bin ejtag-vector.bin mipsvisor.srec; do
        mipsvisor_update_file "$SCRATCH/$file" "$OUT/$file" >/dev/null
    done
    echo "build-fw: $OUT/mipsvisor.elf, mipsvisor.bin, mipsvisor.srec, ejtag-vector.bin"
    ;;
clippy)
    # Debian's cargo without its clippy would run rustup's cargo-clippy for another toolchain
    # (and fail on build-std with a confusing message): say what is missing instead.
    if [ "${CARGO[*]}" = /usr/bin/cargo ] && [ ! -x /usr/bin/cargo-clippy ]; then
        echo "build-fw: clippy for Debian's rustc is missing (apt-get install rust-web-clippy)" >&2
        exit 1
    fi
    "${CARGO[@]}" clippy -p mipsvisor --release --target "$TARGET_JSON" "${ZFLAGS[@]}" \
        -- -D warnings
    ;;
*)
    echo "usage: tools/build-fw.sh [build|clippy]" >&2
    exit 2
    ;;
esac
