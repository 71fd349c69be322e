#!/usr/bin/env bash
# Builds the mipsvisor test guests (guests/, its own cargo workspace) for the guest ABI.
#
#   tools/build-guests.sh [build] [NAME...]   build every guest (or the named ones) into
#                                             out/guests/<name>.elf
#   tools/build-guests.sh clippy              MIPS clippy of all guest crates, -D warnings
#   tools/build-guests.sh test                host tests of the portable guest crate
#                                             (patterns and checksums)
#
# Toolchain selection is shared with tools/build-fw.sh (tools/lib/toolchain.sh).
# Output directory: $MIPSVISOR_OUT or <repo>/out.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${MIPSVISOR_OUT:-$ROOT/out}/guests
GUESTS_DIR=$ROOT/guests
TARGET_JSON=$GUESTS_DIR/mips64el-mipsvisor-guest.json
TARGET_NAME=mips64el-mipsvisor-guest
# Every guest binary crate (a directory with src/main.rs); guest-rt and guest-patterns are
# libraries.
ALL_GUESTS=()
for main in "$GUESTS_DIR"/*/src/main.rs; do
    [ -f "$main" ] && ALL_GUESTS+=("$(basename "$(dirname "$(dirname "$main")")")")
done
MODE=build
if [ $# -gt 0 ]; then
    case "$1" in
    build | clippy | test) MODE=$1; shift ;;
    esac
fi
export CARGO_TARGET_DIR=${MIPSVISOR_GUEST_TARGET_DIR:-$ROOT/target/guests}

# shellcheck source=tools/lib/toolchain.sh
. "$ROOT/tools/lib/toolchain.sh"

cd "$GUESTS_DIR"
case "$MODE" in
build)
    mipsvisor_select_toolchain build-guests || exit 1
    GUESTS=("$@")
    [ ${#GUESTS[@]} -gt 0 ] || GUESTS=("${ALL_GUESTS[@]}")
    PKGS=()
    for g in "${GUESTS[@]}"; do
        [ -f "$GUESTS_DIR/$g/Cargo.toml" ] || { echo "build-guests: no guest '$g'" >&2; exit 2; }
        PKGS+=(-p "$g")
    done
    "${CARGO[@]}" build "${PKGS[@]}" --release --target "$TARGET_JSON" "${MIPSVISOR_ZFLAGS[@]}"
    mkdir -p "$OUT"
    # shellcheck source=tools/lib/update.sh
    . "$ROOT/tools/lib/update.sh"
    SCRATCH=$(mktemp -d)
    CHANGED=()
    for g in "${GUESTS[@]}"; do
        # Copied only when the ELF changed: a new timestamp would make build.rs re-embed
        # every image and the firmware rebuild.
        cp "$CARGO_TARGET_DIR/$TARGET_NAME/release/$g" "$SCRATCH/$g.elf"
        [ -z "$(mipsvisor_update_file "$SCRATCH/$g.elf" "$OUT/$g.elf")" ] || CHANGED+=("$g")
    done
    rmdir "$SCRATCH"
    echo "build-guests: ${#GUESTS[@]} guests in $OUT; changed: ${CHANGED[*]:-none}"
    ;;
clippy)
    mipsvisor_select_toolchain build-guests || exit 1
    "${CARGO[@]}" clippy --workspace --release --target "$TARGET_JSON" "${MIPSVISOR_ZFLAGS[@]}" \
        -- -D warnings
    ;;
test)
    # The portable crate needs no build-std: the host cargo on PATH (or Debian's) will do.
    HOST_CARGO=cargo
    command -v cargo >/dev/null 2>&1 || HOST_CARGO=/usr/bin/cargo
    CARGO_TARGET_DIR=${MIPSVISOR_GUEST_HOST_TARGET_DIR:-$ROOT/target/guests-host} \
        "$HOST_CARGO" test --release -p guest-patterns
    ;;
esac
