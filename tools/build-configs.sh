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

mkdir -p "$OUT"
status=0
for dts in "$ROOT"/configs/*.dts; do
    name=$(basename "$dts" .dts)
    dtb=$OUT/$name.dtb
    # All dtc checks stay on; any output (a warning) fails the layout.
    if ! dtc -I dts -O dtb -o "$dtb" "$dts" 2>"$OUT/$name.log" || [ -s "$OUT/$name.log" ]; then
        echo "FAIL  $name: dtc reported:" >&2
        sed 's/^/      /' "$OUT/$name.log" >&2
        status=1
        continue
    fi
    rm -f "$OUT/$name.log"
    case "$MODE" in
    build) echo "built $dtb" ;;
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
exit $status
