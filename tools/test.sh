#!/usr/bin/env bash
# mipsvisor's test command (README; .ci/run calls it).
#
#   tools/test.sh          everything
#   tools/test.sh host     fmt, host clippy, host tests (portable crates and the firmware's
#                          register-free modules), loom tests if present
#   tools/test.sh qemu     MIPS clippy, firmware build, every QEMU scenario
#
# Installs missing Debian packages first. Each step is judged on its own; the last line is
# "N passed, N failed" and the exit status is non-zero if anything failed. QEMU runs are
# judged by exit status AND the RESULT line (and, for boot, the reported CPUs and RAM).
# Logs: out/test-logs/.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=tools/deps.sh
. "$ROOT/tools/deps.sh"

PART=${1:-all}
case "$PART" in
all | host | qemu) ;;
*) echo "usage: tools/test.sh [host|qemu]" >&2; exit 2 ;;
esac

LOGS=${MIPSVISOR_OUT:-$ROOT/out}/test-logs
mkdir -p "$LOGS"
PASSED=0 FAILED=0 FAILED_NAMES=()
QEMU_TIMEOUT=${QEMU_TIMEOUT:-180}

pass() { PASSED=$((PASSED + 1)); printf 'PASS  %s\n' "$1"; }
fail() {
    FAILED=$((FAILED + 1)); FAILED_NAMES+=("$1")
    printf 'FAIL  %s%s\n' "$1" "${2:+ ($2)}"
}

# step NAME COMMAND...: runs a command, passes on exit status 0.
step() {
    local name=$1 log
    shift
    log=$LOGS/$(echo "$name" | tr -c 'A-Za-z0-9_.-' '_').log
    local start=$SECONDS
    if "$@" >"$log" 2>&1; then
        pass "$name [$((SECONDS - start))s]"
    else
        fail "$name" "see $log"
        tail -n 20 "$log" | sed 's/^/      /'
    fi
}

if ! mipsvisor_ensure_deps test; then
    fail "install dependencies"
    echo "$PASSED passed, $FAILED failed"
    exit 1
fi

# Host cargo: the one on PATH if it has clippy and rustfmt, else Debian's.
if { cargo clippy --version && cargo fmt --version; } >/dev/null 2>&1; then
    HOST_CARGO=(cargo)
else
    HOST_CARGO=(/usr/bin/cargo)
fi

run_host() {
    if "${HOST_CARGO[@]}" fmt --version >/dev/null 2>&1; then
        step "cargo fmt --check" "${HOST_CARGO[@]}" fmt --all -- --check
    else
        # No cargo-fmt wrapper: run rustfmt on the tracked sources directly.
        step "rustfmt --check" sh -c 'git ls-files -z "*.rs" | xargs -0 rustfmt --edition 2021 --check'
    fi
    step "host clippy -D warnings" "${HOST_CARGO[@]}" clippy --all-targets -- -D warnings
    step "host cargo test --release" "${HOST_CARGO[@]}" test --release
    # The firmware package on the host: its register-free modules' unit tests.
    step "firmware host clippy -D warnings" \
        "${HOST_CARGO[@]}" clippy -p mipsvisor --all-targets -- -D warnings
    step "firmware host unit tests" "${HOST_CARGO[@]}" test -p mipsvisor --release
    # The test guests are their own workspace (guests/): formatting and the host tests of
    # their portable pattern/checksum crate.
    step "guests cargo fmt --check" \
        "${HOST_CARGO[@]}" fmt --manifest-path guests/Cargo.toml --all -- --check
    step "guests host tests (guest-patterns)" tools/build-guests.sh test
    step "tools/plot: sample run to PNG, every series drawn" plot_checks
    local loom
    for loom in crates/hv-core/tests/loom*.rs; do
        [ -e "$loom" ] || continue
        loom=$(basename "$loom" .rs)
        step "loom test $loom" env RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$ROOT/target/loom" \
            "${HOST_CARGO[@]}" test -p hv-core --release --test "$loom"
    done
}

# tools/plot on the committed sample run (tools/fixtures/plot-sample.log): a valid PNG of
# the asked size in which every service's line is drawn (its colour spans much of the
# width), the summary ignores a `console: STAT sample` answer and a malformed sample, stdin
# works, and output without samples is refused.
PLOT_SERIES=(dedup=31,119,180:600:25 balloon=230,120,20:600:25 swap=40,160,40:600:25
             absent-red=255,0,0:0:0)
plot_checks() {
    local fixture=tools/fixtures/plot-sample.log png=$LOGS/plot-sample.png summary
    summary=$(tools/plot "$fixture" -o "$png") || return 1
    echo "$summary"
    tools/lib/check-png.py "$png" 800 480 "${PLOT_SERIES[@]}" || return 1
    grep -q '^plot: 39 samples, rounds 1..40, 7 BENCH lines' <<<"$summary" || return 1
    grep -Eq '^dedup +11.31 +11.72$' <<<"$summary" || return 1
    grep -Eq '^balloon +0.00 +16.00$' <<<"$summary" || return 1
    grep -Eq '^swap +5.86 +5.86$' <<<"$summary" || return 1
    tools/plot --size 640x400 -o "$LOGS/plot-stdin.png" <"$fixture" || return 1
    tools/lib/check-png.py "$LOGS/plot-stdin.png" 640 400 "${PLOT_SERIES[@]}" || return 1
    local refused
    if refused=$(printf 'STAT cpus=2\nRESULT boot PASS\n' | tools/plot -o "$LOGS/none.png" 2>&1); then
        echo "tools/plot accepted output without samples"
        return 1
    fi
    echo "$refused"
    grep -q "no 'STAT sample" <<<"$refused"
}

# boot_case NAME qemu-run.sh arguments...: must exit 0 with RESULT boot PASS, and report
# the CPUs and RAM that were asked for.
boot_case() {
    local name=$1 smp=2 mem=512 log rc
    shift
    local args=("$@") i
    for ((i = 0; i < ${#args[@]}; i++)); do
        case "${args[i]}" in
        --smp) smp=${args[i + 1]} ;;
        --mem) mem=${args[i + 1]} ;;
        esac
    done
    log=$LOGS/qemu-$name.log
    local start=$SECONDS
    timeout "$QEMU_TIMEOUT" ./qemu-run.sh --no-build "$@" </dev/null >"$log" 2>&1
    rc=$?
    sed -i 's/\r$//' "$log" # the UART sends CR LF
    local why=""
    [ $rc -eq 0 ] || why="exit status $rc"
    grep -q '^RESULT boot PASS' "$log" || why="${why:+$why, }no RESULT boot PASS"
    grep -q "^STAT cpus=$smp\$" "$log" || why="${why:+$why, }STAT cpus is not $smp"
    grep -q "^STAT ram_mib=$mem\$" "$log" || why="${why:+$why, }STAT ram_mib is not $mem"
    if [ -z "$why" ]; then
        pass "qemu $name [$((SECONDS - start))s]"
    else
        fail "qemu $name" "$why; see $log"
        tail -n 15 "$log" | sed 's/^/      /'
    fi
}

# scenario_case NAME SCENARIO qemu-run.sh arguments...: must exit 0 with RESULT SCENARIO PASS.
scenario_case() {
    local name=$1 scenario=$2 log rc
    shift 2
    log=$LOGS/qemu-$name.log
    local start=$SECONDS
    timeout "$QEMU_TIMEOUT" ./qemu-run.sh --no-build --scenario "$scenario" "$@" </dev/null \
        >"$log" 2>&1
    rc=$?
    sed -i 's/\r$//' "$log"
    local why=""
    [ $rc -eq 0 ] || why="exit status $rc"
    grep -q "^RESULT $scenario PASS" "$log" || why="${why:+$why, }no RESULT $scenario PASS"
    if [ -z "$why" ]; then
        pass "qemu $name [$((SECONDS - start))s]"
    else
        fail "qemu $name" "$why; see $log"
        tail -n 15 "$log" | sed 's/^/      /'
    fi
}

# fail_case NAME PATTERN COMMAND...: must exit non-zero and print PATTERN (grep -E).
fail_case() {
    local name=$1 pattern=$2 log rc
    shift 2
    log=$LOGS/qemu-$name.log
    local start=$SECONDS
    timeout "$QEMU_TIMEOUT" "$@" </dev/null >"$log" 2>&1
    rc=$?
    sed -i 's/\r$//' "$log"
    local why=""
    [ $rc -ne 0 ] && [ $rc -ne 124 ] || why="exit status $rc (expected a failure, not a timeout)"
    grep -Eq -- "$pattern" "$log" || why="${why:+$why, }output lacks /$pattern/"
    if [ -z "$why" ]; then
        pass "qemu $name (fails as it must, status $rc) [$((SECONDS - start))s]"
    else
        fail "qemu $name" "$why; see $log"
        tail -n 15 "$log" | sed 's/^/      /'
    fi
}

run_qemu() {
    step "MIPS clippy -D warnings" tools/build-fw.sh clippy
    step "guests MIPS clippy -D warnings" tools/build-guests.sh clippy
    step "firmware build (elf, bin, srec)" tools/build-fw.sh build
    if [ ! -f "${MIPSVISOR_OUT:-$ROOT/out}/mipsvisor.elf" ]; then
        fail "qemu scenarios" "no firmware image"
        return
    fi
    boot_case "boot-default"
    boot_case "boot-smp1-mem256" --smp 1 --mem 256
    boot_case "boot-smp3-mem768" --smp 3 --mem 768
    boot_case "boot-smp4-mem1024" --smp 4 --mem 1024
    boot_case "boot-smp8-mem512" --smp 8 --mem 512
    boot_case "boot-5KEc-smp2-mem256" --cpu 5KEc --smp 2 --mem 256
    boot_case "boot-Loongson-3A4000-smp4-mem1024" --cpu Loongson-3A4000 --smp 4 --mem 1024
    boot_case "boot-Octeon68XX-smp3-mem512" --cpu Octeon68XX --smp 3 --mem 512
    boot_case "boot-icount-smp4-mem512" --icount --smp 4 --mem 512
    scenario_case "vcpu-selftest-smp1" vcpu-selftest --smp 1
    scenario_case "vcpu-selftest-smp4" vcpu-selftest --smp 4
    scenario_case "vcpu-selftest-5KEc-smp2" vcpu-selftest --cpu 5KEc --smp 2
    scenario_case "guests-smp4" guests --smp 4
    scenario_case "guests-smp1" guests --smp 1
    scenario_case "guests-dedup-layout-affinity" guests --smp 2 --config dedup
    scenario_case "guests-initrd-image" guests --smp 2 \
        --initrd "${MIPSVISOR_OUT:-$ROOT/out}/guests/hello.elf"
    # memguest's workloads that need no memory service (swap waves, stress) pass on their own.
    scenario_case "guests-memguest-smp2" guests --smp 2 --config memguest
    scenario_case "guests-memguest-smp1" guests --smp 1 --config memguest
    scenario_case "isolation-smp2" isolation --smp 2
    scenario_case "isolation-smp1" isolation --smp 1
    fail_case "panic-selftest" \
        '^PANIC on cpu0 at src/.*deliberate panic' \
        ./qemu-run.sh --no-build --scenario panic-selftest
    fail_case "panic-selftest-result" '^RESULT panic-selftest FAIL panic:' \
        ./qemu-run.sh --no-build --scenario panic-selftest
    fail_case "fault-selftest" \
        '^UNEXPECTED EXCEPTION on cpu0: TLBL .*|^RESULT fault-selftest FAIL unexpected exception' \
        ./qemu-run.sh --no-build --scenario fault-selftest
    fail_case "firmware-rejects-unknown-scenario" \
        "^RESULT nope FAIL unknown scenario 'nope'; valid scenarios: boot, panic-selftest" \
        ./qemu-run.sh --no-build -- -append "scenario=nope"
    fail_case "qemu-run-rejects-unknown-scenario" "unknown scenario 'nope'; valid scenarios: boot" \
        ./qemu-run.sh --no-build --scenario nope
    fail_case "qemu-run-rejects-unknown-option" "unknown option '--frobnicate'" \
        ./qemu-run.sh --no-build --frobnicate
}

case "$PART" in
host) run_host ;;
qemu) run_qemu ;;
all) run_host; run_qemu ;;
esac

if [ $FAILED -gt 0 ]; then
    echo "failed: ${FAILED_NAMES[*]}"
fi
echo "$PASSED passed, $FAILED failed"
[ $FAILED -eq 0 ]
