#!/usr/bin/env bash
# Compiles the VM layouts configs/*.dts into device tree blobs with dtc.
#
#   tools/build-configs.sh           out/configs/<name>.dtb for every configs/<name>.dts
#   tools/build-configs.sh fixtures  also refresh the committed test copies in
#                                    crates/hv-devices/tests/fixtures/
#   tools/build-configs.sh check     fail if a committed fixture differs from its .dts
#
# Needs dtc (Debian package device-tree-compiler). Output directory: $MIPSVISOR_OUT or
# <repo>/out. dtc warnings are errors: a layout must compile cleanly.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${MIPSVISOR_OUT:-$ROOT/out}/configs
FIXTURES=$ROOT/crates/hv-devices/tests/fixtures
MODE=${1:-build}

case "$MODE" in
build | fixtures | check) ;;
*) echo "usage: tools/build-configs.sh [fixtures|check]" >&2; exit 2 ;;
esac
if ! command -v dtc >/dev/null 2>&1; then
    echo "tools/build-configs.sh: dtc not found (install device-tree-compiler)" >&2
    exit 1
fi

# shellcheck source=tools/lib/update.sh
. "$ROOT/tools/lib/update.sh"
mkdir -p "$OUT"
# dtc writes into a scratch directory; a blob replaces out/configs/NAME.dtb only when its
# bytes changed, so an unchanged layout does not make the firmware rebuild.
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
status=0
compgen -G "$ROOT/configs/*.dts" >/dev/null || { echo "tools/build-configs.sh: no configs/*.dts" >&2; exit 1; }
for dts in "$ROOT"/configs/*.dts; do
    name=$(basename "$dts" .dts)
    dtb=$OUT/$name.dtb
    # All dtc checks stay on; any output (a warning) fails the layout.
    if ! dtc -I dts -O dtb -o "$SCRATCH/$name.dtb" "$dts" 2>"$SCRATCH/$name.log" \
        || [ -s "$SCRATCH/$name.log" ]; then
        echo "FAIL  $name: dtc reported:" >&2
        sed 's/^/      /' "$SCRATCH/$name.log" >&2
        rm -f "$dtb" # never embed a stale blob of a layout that no longer compiles
        status=1
        continue
    fi
    if [ "$MODE" = check ]; then
        dtb=$SCRATCH/$name.dtb
    elif [ -n "$(mipsvisor_update_file "$SCRATCH/$name.dtb" "$dtb")" ]; then
        echo "built $dtb"
    fi
    case "$MODE" in
    build) ;;
    fixtures)
        mkdir -p "$FIXTURES"
        cp "$dtb" "$FIXTURES/$name.dtb"
        echo "built $dtb, fixture updated"
        ;;
    check)
        if cmp -s "$dtb" "$FIXTURES/$name.dtb"; then
            echo "ok    $name"
        else
            echo "STALE $name: run tools/build-configs.sh fixtures" >&2
            status=1
        fi
        ;;
    esac
done
# A blob whose layout was deleted must not stay embedded.
for dtb in "$OUT"/*.dtb; do
    [ -e "$dtb" ] || continue
    [ -f "$ROOT/configs/$(basename "$dtb" .dtb).dts" ] || { rm -f "$dtb"; echo "removed $dtb"; }
done
[ $status -eq 0 ] && [ "$MODE" = build ] && echo "layouts: out/configs up to date"
exit $status
