#!/usr/bin/env bash
# Build mipsvisor and boot it on QEMU's Malta board; exits with the firmware's own status.
#
#   ./qemu-run.sh [--scenario NAME] [--cpu MODEL] [--smp N] [--mem MiB] [--icount] [--gdb]
#                 [--config NAME] [--initrd FILE] [--bundle FILE] [--linux] [--no-build]
#                 [-- extra QEMU arguments]
#
# Defaults: scenario demo (every memory service, ending in a table of memory saved), CPU
# MIPS64R2-generic, 2 CPUs, 512 MiB. The scenario and the
# expected CPU count and RAM size reach the firmware on the boot command line (-append),
# so no rebuild is needed to switch. Missing packages are installed on Debian 12.
#
# Exit status: the firmware's own (0 pass, 1 a check failed, 3 panic, 4 unexpected exception
# in the firmware), or this script's: 2 a bad option, 5 missing packages or a failed build,
# 6 QEMU itself failed (could not start, bad QEMU argument), 130/143 interrupted.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tools/deps.sh
. "$ROOT/tools/deps.sh"

SCENARIOS=(boot panic-selftest fault-selftest guests isolation vcpu-selftest bench sidebyside svc-bench balloon dedup swap idle stress demo limits watchdog)
CPUS=(MIPS64R2-generic 5KEc Loongson-3A4000 Octeon68XX)

usage() {
    cat <<USAGE
usage: ./qemu-run.sh [options] [-- extra QEMU arguments]
  --scenario NAME   one of: ${SCENARIOS[*]} (default demo)
  --cpu MODEL       one of: ${CPUS[*]} (default MIPS64R2-generic)
  --smp N           CPUs, 1..8 (default 2)
  --mem MiB         RAM in MiB, 64..2048 (default 512)
  --icount          deterministic instruction counting (-icount shift=0)
  --config NAME     VM layout configs/NAME.dts for the guest scenarios (config=NAME)
  --initrd FILE     run the guest ELF FILE (passed with -initrd) in the layout's VMs whose
                    image is "initrd" or, if none is, in every VM of the layout
  --linux           boot the Linux guest (tools/build-linux-guest.sh, cached): scenario
                    guests, layout linux unless --scenario/--config say otherwise
  --bundle FILE     run the VMs of a bundle (tools/mkbundle: a FIT image of a layout and
                    its guest images, passed with -initrd); scenario guests unless given
  --gdb             wait for gdb-multiarch on localhost:1234 before starting
  --no-build        boot the last build in out/ without rebuilding
  -h, --help        this text
USAGE
}

die_usage() {
    echo "qemu-run.sh: $1" >&2
    usage >&2
    exit 2
}

contains() { # $1 = needle, rest = haystack
    local needle=$1 item
    shift
    for item in "$@"; do [ "$item" = "$needle" ] && return 0; done
    return 1
}

SCENARIO="" CPU=MIPS64R2-generic SMP=2 MEM=512 ICOUNT=0 GDB=0 BUILD=1 CONFIG="" INITRD="" BUNDLE="" LINUX=0
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
    --scenario | --cpu | --smp | --mem | --config | --initrd | --bundle)
        [ $# -ge 2 ] || die_usage "$1 needs a value"
        case "$1" in
        --config) CONFIG=$2 ;;
        --initrd) INITRD=$2 ;;
        --bundle) BUNDLE=$2 ;;
        --scenario) SCENARIO=$2 ;;
        --cpu) CPU=$2 ;;
        --smp) SMP=$2 ;;
        --mem) MEM=$2 ;;
        esac
        shift 2
        ;;
    --icount) ICOUNT=1; shift ;;
    --linux) LINUX=1; shift ;;
    --gdb) GDB=1; shift ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die_usage "unknown option '$1'" ;;
    esac
done

# The Linux guest runs in the guests scenario on its own layout unless told otherwise.
if [ $LINUX -eq 1 ]; then
    [ -z "$BUNDLE" ] || die_usage "--linux and --bundle both use the initrd: give one"
    SCENARIO=${SCENARIO:-guests}
    CONFIG=${CONFIG:-linux}
fi
# A bundle's VMs run to completion by default; otherwise the demo of every service.
[ -n "$SCENARIO" ] || { [ -n "$BUNDLE" ] && SCENARIO=guests; } || SCENARIO=demo
contains "$SCENARIO" "${SCENARIOS[@]}" \
    || die_usage "unknown scenario '$SCENARIO'; valid scenarios: ${SCENARIOS[*]}"
if ! contains "$CPU" "${CPUS[@]}"; then
    case "$CPU" in
    I6400 | I6500)
        die_usage "$CPU is MIPS64 Release 6 (other encodings, Boston board): it needs an R6 build, which mipsvisor does not have yet; valid CPUs: ${CPUS[*]}" ;;
    *) die_usage "unknown CPU '$CPU'; valid CPUs: ${CPUS[*]}" ;;
    esac
fi
[[ "$SMP" =~ ^[0-9]+$ ]] && [ "$SMP" -ge 1 ] && [ "$SMP" -le 8 ] \
    || die_usage "--smp must be a number from 1 to 8, not '$SMP'"
[[ "$MEM" =~ ^[0-9]+$ ]] && [ "$MEM" -ge 64 ] && [ "$MEM" -le 2048 ] \
    || die_usage "--mem must be a number of MiB from 64 to 2048, not '$MEM'"

[ -z "$INITRD" ] || [ -f "$INITRD" ] || die_usage "--initrd: no such file '$INITRD'"
if [ -n "$BUNDLE" ]; then
    [ -z "$INITRD" ] || die_usage "--bundle and --initrd both use the initrd: give one"
    [ -f "$BUNDLE" ] || die_usage "--bundle: no such file '$BUNDLE'"
    [ "$(head -c 4 "$BUNDLE" | od -An -tx1 | tr -d ' \n')" = d00dfeed ] \
        || die_usage "--bundle: '$BUNDLE' is not a FIT image (make one with tools/mkbundle)"
fi

mipsvisor_ensure_deps firmware || exit 5
if [ $GDB -eq 1 ]; then mipsvisor_ensure_deps gdb || exit 5; fi

OUT=${MIPSVISOR_OUT:-$ROOT/out}
if [ $BUILD -eq 1 ]; then
    "$ROOT/tools/build-fw.sh" >&2 || { echo "qemu-run.sh: the build failed (above): status 5" >&2; exit 5; }
fi
[ -f "$OUT/mipsvisor.elf" ] || { echo "qemu-run.sh: $OUT/mipsvisor.elf missing (build first)" >&2; exit 5; }

# A layout whose VMs name image "initrd" (configs/linux*.dts) takes the initrd for those VMs
# only; without --initrd such a layout gets the Linux guest, built or taken from its cache.
LAYOUT_WANTS_INITRD=0
if [ -n "$CONFIG" ] && [ -f "$ROOT/configs/$CONFIG.dts" ] \
    && grep -Eq '^[[:space:]]*image = "initrd";' "$ROOT/configs/$CONFIG.dts"; then
    LAYOUT_WANTS_INITRD=1
fi
if [ -z "$INITRD" ] && [ -z "$BUNDLE" ] && { [ $LINUX -eq 1 ] || [ $LAYOUT_WANTS_INITRD -eq 1 ]; }; then
    INITRD=$("$ROOT/tools/build-linux-guest.sh") \
        || { echo "qemu-run.sh: building the Linux guest failed (above): status 5" >&2; exit 5; }
    LAYOUT_WANTS_INITRD=1
fi
APPEND="scenario=$SCENARIO cpus=$SMP mem=$MEM${CONFIG:+ config=$CONFIG}"
# Without VMs of its own for the initrd, the layout runs it in every VM.
if [ -n "$INITRD" ] && [ $LAYOUT_WANTS_INITRD -eq 0 ]; then APPEND+=" image=initrd"; fi

# No NIC and no VGA: the firmware uses neither, and without them QEMU needs no ROM files
# (Malta's defaults want efi-pcnet.rom and vgabios-cirrus.bin, packages a minimal Debian lacks).
QEMU=(qemu-system-mips64el -M malta -cpu "$CPU" -smp "$SMP" -m "$MEM" -nographic -no-reboot
      -nic none -vga none
      -semihosting -kernel "$OUT/mipsvisor.elf"
      -append "$APPEND")
# The firmware's EJTAG debug stub goes to the debug vector in the boot ROM (physical
# 0x1fc00480), so that a guest's SDBBP comes back to the hypervisor as a guest exit.
if [ -f "$OUT/ejtag-vector.bin" ]; then
    QEMU+=(-device "loader,file=$OUT/ejtag-vector.bin,addr=0x1fc00480,force-raw=on")
fi
if [ -n "$INITRD" ]; then
    QEMU+=(-initrd "$INITRD")
fi
# The firmware tells a bundle from an ELF initrd by its first word (the FDT magic).
[ -z "$BUNDLE" ] || QEMU+=(-initrd "$BUNDLE")
[ $ICOUNT -eq 1 ] && QEMU+=(-icount shift=0)
if [ $GDB -eq 1 ]; then
    QEMU+=(-s -S)
    # QEMU halts in Malta's boot ROM, which has no symbols: the hint runs to the firmware's
    # entry point (ENTRY in linker.ld) so the user starts where the source does. The address
    # is numeric: a minimal system may have no /etc/hosts to resolve a name with.
    echo "qemu-run.sh: waiting for gdb on localhost:1234; connect with:" >&2
    echo "  gdb-multiarch $OUT/mipsvisor.elf -ex 'target remote 127.0.0.1:1234' -ex 'break _start' -ex continue" >&2
fi

# Run QEMU as a child (not exec) so that its own failures get their own status. QEMU's
# messages go to stderr, the firmware's to the serial port on stdout; QEMU ends with status
# 1 on its own errors (a missing ROM, a bad option), and a firmware status 1 means a check
# failed, so a status 1 that comes with a QEMU error line is reported as status 6.
QEMU_ERR=$(mktemp "${TMPDIR:-/tmp}/qemu-run.XXXXXX")
QEMU_PID=""
stop_qemu() {
    [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null
    rm -f "$QEMU_ERR"
}
trap stop_qemu EXIT
trap 'stop_qemu; exit 130' INT
trap 'stop_qemu; exit 143' TERM
set +e
# A background command's stdin would be /dev/null: hand QEMU ours (the operator console).
exec 3<&0
"${QEMU[@]}" "${EXTRA[@]}" <&3 3<&- 2>"$QEMU_ERR" &
QEMU_PID=$!
wait "$QEMU_PID"
status=$?
QEMU_PID=""
set -e
cat "$QEMU_ERR" >&2
if [ $status -eq 1 ] && grep -v -E '^[^:]+: warning:' "$QEMU_ERR" | grep -q .; then
    echo "qemu-run.sh: QEMU stopped with its own error (above), not the firmware: status 6" >&2
    status=6
fi
exit $status
