#!/usr/bin/env bash
# Instruction cost of guest exits, deterministic: boots the `bench` scenario under
# `-icount shift=0` on one CPU and prints its BENCH lines.
#
#   tools/bench.sh [--no-build] [--cpu MODEL]
#
# Method (src/vmm/bench.rs): with -icount every instruction takes the same virtual time,
# so Count converts into instructions with one factor, calibrated in the firmware with a
# loop of known length. The benchmark guest runs, per kind of event, an event loop and a
# baseline loop of identical instructions (>= 1000 events each); the extra instructions
# divided by the extra exits give the cost of one event from the exception to the guest's
# next instruction. Prints:
#   BENCH refill_insns=, fast_fault_insns=, first_touch_fault_insns=, mtc0_emul_insns=,
#   hypercall_insns= (instructions per event) and BENCH count_calibration=.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
    --no-build) ARGS+=(--no-build); shift ;;
    --cpu) ARGS+=(--cpu "$2"); shift 2 ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown option '$1'" >&2; exit 2 ;;
    esac
done

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
status=0
timeout "${BENCH_TIMEOUT:-300}" "$ROOT/qemu-run.sh" "${ARGS[@]}" --scenario bench --smp 1 --icount \
    </dev/null >"$LOG" 2>&1 || status=$?
tr -d '\r' <"$LOG" | grep -E '^(BENCH|STAT bench|RESULT bench)' || true
if [ $status -ne 0 ]; then
    echo "bench.sh: the bench scenario failed (status $status):" >&2
    tail -n 20 "$LOG" >&2
    exit 1
fi
