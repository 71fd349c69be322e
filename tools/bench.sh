#!/usr/bin/env bash
# Instruction costs, deterministic: boots the `bench`, `sidebyside` and `svc-bench`
# scenarios under `-icount shift=0` on one CPU and prints their BENCH lines.
#
#   tools/bench.sh [--no-build] [--cpu MODEL]
#
# Method: with -icount every instruction takes the same virtual time, so Count converts
# into instructions with one factor, calibrated in the firmware with a loop of known length.
#
# `bench` (src/vmm/bench.rs), guest exits: the benchmark guest runs, per kind of event, an
# event loop and a baseline loop of identical instructions (>= 1000 events each); the extra
# instructions divided by the extra exits give the cost of one event from the exception to
# the guest's next instruction. Prints BENCH refill_insns=, fast_fault_insns=,
# first_touch_fault_insns=, mtc0_emul_insns=, hypercall_insns= (per event) and
# count_calibration=.
#
# `sidebyside` (src/vmm/sidebyside.rs, src/arch/mips/sidebyside.s), 1024 MiB of RAM: the
# same workload bytes run bare-metal by the firmware in kernel mode (no hypervisor in the
# path) and as a 256 MiB guest, each workload timed with Count (in the guest, by the host
# at YIELD hypercalls). Prints BENCH ratio_compute=, ratio_read_32mib=, ratio_read_256mib=,
# ratio_first_touch=, ratio_guest_tlb_miss= (host instructions per guest instruction:
# guest ticks over bare ticks), guest_tlb_refill_insns= (host instructions of one whole
# guest TLB refill: the trapped instructions of a Linux-like handler and the fault that
# follows) and bare_tlb_refill_insns= (the same refill run natively), plus the instruction
# counts of each workload, bare and guest (STAT sbs_*).
#
# `svc-bench` (src/vmm/svc_bench.rs), memory services, no guest: times each service
# operation over 2048 pages of a memory-core VM on firmware frames. Prints BENCH
# dedup_checksum_insns_per_page=, dedup_merge_insns=, cow_break_insns=,
# balloon_inflate_insns_per_page= (chains of 256 consecutive PFNs; _scattered_ with none
# adjacent), swap_out_insns=, swap_in_insns= (per event) and
# dedup_metadata_bytes_per_page= (the dedup service's accounting, checked against the heap).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
    --no-build) ARGS+=(--no-build); shift ;;
    --cpu) ARGS+=(--cpu "$2"); shift 2 ;;
    -h | --help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown option '$1'" >&2; exit 2 ;;
    esac
done

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
failed=0
for scenario in bench sidebyside svc-bench; do
    status=0
    mem=512
    # The bare run needs 264 MiB of consecutive frames beside the guest's 256 MiB pool.
    [ "$scenario" = sidebyside ] && mem=1024
    timeout "${BENCH_TIMEOUT:-300}" "$ROOT/qemu-run.sh" "${ARGS[@]}" --scenario "$scenario" \
        --smp 1 --icount --mem "$mem" </dev/null >"$LOG" 2>&1 || status=$?
    tr -d '\r' <"$LOG" | grep -E "^(BENCH|STAT ((svc_)?bench|sbs_)|RESULT $scenario)" || true
    if [ $status -ne 0 ]; then
        echo "bench.sh: the $scenario scenario failed (status $status):" >&2
        tail -n 20 "$LOG" >&2
        failed=1
    fi
    # Build once: the second scenario boots the same image.
    case " ${ARGS[*]-} " in
    *" --no-build "*) ;;
    *) ARGS+=(--no-build) ;;
    esac
done
exit $failed
