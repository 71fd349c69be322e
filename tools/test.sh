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
    # Net figures may be negative (swap whose store takes more frames than it frees): drawn
    # below a 0 line, not dropped.
    local negative
    negative=$(printf '%s\n' \
        'STAT sample t=1 dedup_saved_pages=256 balloon_saved_pages=0 swap_saved_pages=-512 free_frames=9' \
        'STAT sample t=9 dedup_saved_pages=512 balloon_saved_pages=0 swap_saved_pages=-256 free_frames=9' |
        tools/plot -o "$LOGS/plot-negative.png" 2>&1) || return 1
    echo "$negative"
    grep -q '^plot: 2 samples, rounds 1..9' <<<"$negative" || return 1
    grep -Eq '^swap +-1.00 +-1.00$' <<<"$negative" || return 1
    tools/lib/check-png.py "$LOGS/plot-negative.png" 800 480 swap=40,160,40:600:25 || return 1
    local refused
    if refused=$(printf 'STAT cpus=2\nRESULT boot PASS\n' | tools/plot -o "$LOGS/none.png" 2>&1); then
        echo "tools/plot accepted output without samples"
        return 1
    fi
    echo "$refused"
    grep -q "no 'STAT sample" <<<"$refused"
}

# qemu_capture LOG COMMAND...: runs COMMAND (stdin as the caller gives it) under the QEMU
# timeout with all its output in LOG, turns the UART's CR LF into LF, and returns COMMAND's
# exit status (124 on a timeout).
qemu_capture() {
    local log=$1 rc
    shift
    timeout "$QEMU_TIMEOUT" "$@" >"$log" 2>&1
    rc=$?
    sed -i 's/\r$//' "$log" # the UART sends CR LF
    return $rc
}

# qemu_verdict NAME LOG START WHY [NOTE]: passes "qemu NAME [NOTE] [seconds since START]" if
# WHY is empty, else fails NAME with WHY and shows the end of LOG.
qemu_verdict() {
    local name=$1 log=$2 start=$3 why=$4 note=${5:-}
    if [ -z "$why" ]; then
        pass "qemu $name${note:+ $note} [$((SECONDS - start))s]"
    else
        fail "qemu $name" "$why; see $log"
        tail -n 15 "$log" | sed 's/^/      /'
    fi
}

# plot_run LOG SERIES_SPEC...: tools/plot on a scenario's real output (LOG, written by an
# earlier case) draws each given service's line (check-png.py specs).
plot_run() {
    local log=$1
    shift
    [ -f "$log" ] || { echo "no $log (its QEMU case did not run)"; return 1; }
    tools/plot "$log" -o "$log.png" && tools/lib/check-png.py "$log.png" 800 480 "$@"
}

# stray_prompt LOG: says why if a run nobody typed into (stdin /dev/null) shows the operator
# console's prompt (it appears only while the operator types).
stray_prompt() {
    if grep -q 'mipsvisor> ' "$1"; then
        echo "a 'mipsvisor> ' prompt in a run without input: $(grep -m1 -n 'mipsvisor> ' "$1")"
    fi
}

# saved_case NAME LOG [--table] [--no-prompt]: the summaries of memory saved in a services
# run (out/test-logs/qemu-LOG.log) agree: STAT sample lines (as tools/plot reads them), the
# STAT <service>_saved_pages[_peak] lines, swap's net figure and, with --table, the table,
# which must be the last output (tools/lib/check-saved.py).
saved_case() {
    local name=$1 log=$LOGS/qemu-$2.log
    shift 2
    step "$name" tools/lib/check-saved.py "$log" "$@"
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
    qemu_capture "$log" ./qemu-run.sh --no-build --scenario boot "$@" </dev/null
    rc=$?
    local why=""
    [ $rc -eq 0 ] || why="exit status $rc"
    grep -q '^RESULT boot PASS' "$log" || why="${why:+$why, }no RESULT boot PASS"
    grep -q "^STAT cpus=$smp\$" "$log" || why="${why:+$why, }STAT cpus is not $smp"
    grep -q "^STAT ram_mib=$mem\$" "$log" || why="${why:+$why, }STAT ram_mib is not $mem"
    local stray
    stray=$(stray_prompt "$log")
    [ -z "$stray" ] || why="${why:+$why, }$stray"
    qemu_verdict "$name" "$log" "$start" "$why"
}

# scenario_case NAME SCENARIO qemu-run.sh arguments...: must exit 0 with RESULT SCENARIO PASS.
scenario_case() {
    local name=$1 scenario=$2 log rc
    shift 2
    log=$LOGS/qemu-$name.log
    local start=$SECONDS
    qemu_capture "$log" ./qemu-run.sh --no-build --scenario "$scenario" "$@" </dev/null
    rc=$?
    local why=""
    [ $rc -eq 0 ] || why="exit status $rc"
    grep -q "^RESULT $scenario PASS" "$log" || why="${why:+$why, }no RESULT $scenario PASS"
    local stray
    stray=$(stray_prompt "$log")
    [ -z "$stray" ] || why="${why:+$why, }$stray"
    qemu_verdict "$name" "$log" "$start" "$why"
}

# run_case NAME SCENARIO qemu-run.sh arguments...: runs a scenario whose verdict depends on
# services that may be absent; passes if it ran to its RESULT line (log_case judges it).
run_case() {
    local name=$1 scenario=$2 log rc
    shift 2
    log=$LOGS/qemu-$name.log
    local start=$SECONDS
    qemu_capture "$log" ./qemu-run.sh --no-build --scenario "$scenario" "$@" </dev/null
    rc=$?
    local why=""
    if [ $rc -eq 124 ] || ! grep -Eq "^RESULT $scenario (PASS|FAIL)" "$log"; then
        why="exit status $rc, no RESULT $scenario line"
    fi
    qemu_verdict "$name" "$log" "$start" "$why"
}

# log_case NAME LOG PATTERN...: a scenario's log (out/test-logs/qemu-LOG.log) has a line
# matching each PATTERN (grep -E).
log_case() {
    local name=$1 log=$LOGS/qemu-$2.log pattern missing=()
    shift 2
    for pattern in "$@"; do
        grep -Eq -- "$pattern" "$log" 2>/dev/null || missing+=("/$pattern/")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        pass "$name"
    else
        fail "$name" "$log lacks ${missing[*]}"
    fi
}

# console_answer LOG COMMAND: the `console: ` lines answering COMMAND (those after the prompt
# line that shows it, up to the next prompt line; other output may interleave).
console_answer() {
    awk -v want="mipsvisor> $2" '
        index($0, "mipsvisor> ") == 1 { capture = ($0 == want); next }
        capture && index($0, "console: ") == 1 { print }' "$1"
}

# console_case NAME SCENARIO VM KSM_RE BALLOON_RE SWAP_RE IDLE_RE qemu-run.sh arguments...: pipes
# operator commands into a service scenario (VM = one of its VMs) and checks that the
# scenario still passes and that every command got its own answer from the services' view
# (src/services/view.rs): the VM table and pool figures, and the answers of `ksm`,
# `balloon VM 8`, `swap` and `idle VM` (matching the given grep -E patterns: they differ with
# the services the scenario runs), and a one-line error for each bad command.
console_case() {
    local name=$1 scenario=$2 vm=$3 ksm_re=$4 balloon_re=$5 swap_re=$6 idle_re=$7 log rc
    shift 7
    log=$LOGS/qemu-$name.log
    local start=$SECONDS
    printf '%s\n' help vms stats ksm "balloon $vm 8" swap "idle $vm" "frobnicate now" \
        "balloon $vm lots" "idle" "idle nosuchvm" "vms" |
        qemu_capture "$log" ./qemu-run.sh --no-build --scenario "$scenario" "$@"
    rc=$?
    local why="" answer
    [ $rc -eq 0 ] || why="exit status $rc"
    grep -q "^RESULT $scenario PASS" "$log" || why="${why:+$why, }no RESULT $scenario PASS"
    grep -q '^STAT sample ' "$log" || why="${why:+$why, }no STAT sample line"
    # console_expect COMMAND REGEX: the answer to COMMAND has a line matching REGEX (grep -E).
    console_expect() {
        answer=$(console_answer "$log" "$1")
        grep -Eq -- "$2" <<<"$answer" || why="${why:+$why, }'$1' answer lacks /$2/"
    }
    # console_expect_no_error COMMAND: COMMAND was answered, and not with an error.
    console_expect_no_error() {
        answer=$(console_answer "$log" "$1")
        if [ -z "$answer" ]; then
            why="${why:+$why, }no answer to '$1'"
        elif grep -q '^console: error:' <<<"$answer"; then
            why="${why:+$why, }'$1' answered with an error"
        fi
    }
    console_expect help '^console:   balloon <vm> <MiB> '
    console_expect help '^console:   idle <vm> '
    local command
    for command in vms stats ksm "balloon $vm 8" swap "idle $vm"; do
        console_expect_no_error "$command"
    done
    console_expect vms '^console: vm +id +ram_mib +private +shared +swapped +ballooned +state$'
    console_expect vms "^console: $vm +[0-9]+ +[1-9][0-9]* +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+  (running|exited)"
    console_expect stats '^console: round [1-9][0-9]*  pool [1-9][0-9]* frames, [0-9]+ free$'
    console_expect ksm "$ksm_re"
    console_expect "balloon $vm 8" "$balloon_re"
    console_expect swap "$swap_re"
    console_expect "idle $vm" "$idle_re"
    console_expect "idle nosuchvm" "^console: no VM named 'nosuchvm'$"
    console_expect "frobnicate now" "^console: error: unknown command 'frobnicate'; type 'help'"
    console_expect "balloon $vm lots" "^console: error: balloon: 'lots' is not a decimal number"
    console_expect idle '^console: error: idle: missing <vm>; usage: idle <vm>$'
    [ "$(console_answer "$log" "frobnicate now" | wc -l)" -eq 1 ] ||
        why="${why:+$why, }the bad command got more than one line"
    # Output printed while the prompt was open must start its own line, and the prompt
    # shows only with what the operator typed (never alone, never inside another line).
    ! grep -Eq '^mipsvisor> .*(STAT|RESULT|BENCH) ' "$log" ||
        why="${why:+$why, }a STAT/RESULT/BENCH line was glued to the prompt"
    ! grep -Eq '.mipsvisor> |^mipsvisor> $' "$log" ||
        why="${why:+$why, }a prompt inside another line or standing alone"
    qemu_verdict "$name" "$log" "$start" "$why"
}

# bench_case NAME SCENARIO FIGURE...: runs SCENARIO under --icount on one CPU; it must pass
# and print "BENCH FIGURE=N" with N > 0 for every FIGURE (no timing thresholds).
bench_case() {
    local name=$1 scenario=$2 log rc figure
    shift 2
    log=$LOGS/qemu-$name.log
    local start=$SECONDS
    qemu_capture "$log" ./qemu-run.sh --no-build --scenario "$scenario" --smp 1 --icount \
        </dev/null
    rc=$?
    local why=""
    [ $rc -eq 0 ] || why="exit status $rc"
    grep -q "^RESULT $scenario PASS" "$log" || why="${why:+$why, }no RESULT $scenario PASS"
    for figure in "$@"; do
        grep -Eq "^BENCH $figure=[1-9][0-9]* " "$log" ||
            why="${why:+$why, }no positive BENCH $figure"
    done
    local stray
    stray=$(stray_prompt "$log")
    [ -z "$stray" ] || why="${why:+$why, }$stray"
    qemu_verdict "$name" "$log" "$start" "$why"
}

# fail_case NAME PATTERN COMMAND...: must exit non-zero and print PATTERN (grep -E).
fail_case() {
    local name=$1 pattern=$2 log rc
    shift 2
    log=$LOGS/qemu-$name.log
    local start=$SECONDS
    qemu_capture "$log" "$@" </dev/null
    rc=$?
    local why=""
    [ $rc -ne 0 ] && [ $rc -ne 124 ] || why="exit status $rc (expected a failure, not a timeout)"
    grep -Eq -- "$pattern" "$log" || why="${why:+$why, }output lacks /$pattern/"
    qemu_verdict "$name" "$log" "$start" "$why" "(fails as it must, status $rc)"
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
    # dedup (~5-10 s each): 4 memguests in one trust group + a loner pinned to CPU 0 (on
    # --smp 2 CPU 0 is the services CPU and still runs it); the scenario judges itself:
    # pages_sharing >= 99 % of mergeable_pages after 2 full scans, no frame shared across
    # trust domains (frame identities), every guest's COW writes verified, frames_leaked=0.
    scenario_case "dedup-smp2" dedup --smp 2
    scenario_case "dedup-smp1" dedup --smp 1
    # dup0 on 2 vCPUs (vCPU 1 parked on code pages dedup merges): the remote flushes must
    # reach every CPU holding either vCPU's derived translations.
    scenario_case "dedup-2vcpu-smp4" dedup --smp 4 --config dedup-vcpus
    # stress (~60 s alone, up to ~3 min under load; the longest case): 4 memguest VMs x
    # 300000 verified random page operations + a balloonguest cycle, with dedup, idle
    # tracking and swap (pool = guest RAM) running; bad_pages=0 and frames_leaked=0.
    QEMU_TIMEOUT=420 scenario_case "stress-smp4" stress --smp 4
    log_case "stress: 10^6 operations, nothing lost or leaked" stress-smp4 \
        '^STAT stress_ops=[0-9]{7,}$' '^STAT bad_pages=0$' '^STAT frames_leaked=0$' \
        '^STAT swap_slots_leaked=0$'
    # demo (~5-15 s): the default of ./qemu-run.sh; ends in the table of memory saved, which
    # must show the figures of the STAT sample and STAT <service>_saved_pages[_peak] lines.
    scenario_case "demo-smp2" demo --smp 2
    log_case "demo: table of memory saved per service" demo-smp2 \
        '^  memory saved per service' '^STAT dedup_saved_pages_peak=[1-9]' \
        '^STAT balloon_saved_pages_peak=[1-9]' '^STAT frames_leaked=0$' \
        '^\[cpu[0-9]+\] VM batch: balloon: refused .*\(deliberate: '
    saved_case "demo: table, STAT lines and plot samples agree, table last" demo-smp2 \
        --table --no-prompt
    scenario_case "demo-smp1" demo --smp 1
    saved_case "demo smp1: table, STAT lines and plot samples agree, table last" demo-smp1 \
        --table --no-prompt
    log_case "dedup merges what can be merged" dedup-smp2 \
        '^STAT mergeable_pages=[1-9][0-9]*$' '^STAT cross_domain_frames=0$' \
        '^STAT cross_domain_frames_at_end=0$' '^STAT end_cow_breaks=[1-9][0-9]*$' \
        '^STAT frames_leaked=0$'
    scenario_case "guests-initrd-image" guests --smp 2 \
        --initrd "${MIPSVISOR_OUT:-$ROOT/out}/guests/hello.elf"
    # memguest's workloads that need no memory service (swap waves, stress) pass on their own.
    scenario_case "guests-memguest-smp2" guests --smp 2 --config memguest
    # VM info keys 9, 10 and 13 as the layout sets them, and the workloads' verdict lines.
    log_case "memguest VM info and verdicts" guests-memguest-smp2 \
        '^\[mg-swap\] memguest: vm 0 workload 3 arg 3 .*, balloon none$' \
        '^\[mg-stress\] memguest: vm 1 workload 5 arg 20000 .*, balloon 0x1f002000$' \
        '^\[mg-swap\] memguest: swap wave 3/3 wrote [0-9]+ pages, verified [0-9]+ pages, 0 bad$' \
        '^\[mg-swap\] memguest: verified [0-9]+ pages, 0 bad$' \
        '^\[mg-stress\] memguest: stress ops 20000 bad_pages 0$'
    # One VM per workload. Without the services task in this scenario dedup and idle wait
    # ~30 s, give up (exit 3) and still write and verify their memory; with it they pass.
    run_case "guests-memguest-smoke-smp1" guests --smp 1 --config memguest-smoke
    log_case "memguest every workload verifies its memory" guests-memguest-smoke-smp1 \
        '^\[mg-dedup\] memguest: dedup filled [0-9]+ pages' \
        '^\[mg-dedup\] memguest: (dedup full scans [0-9]+ -> [0-9]+ after|FAIL gave up waiting for dedup full scans)' \
        '^\[mg-dedup\] memguest: copy-on-write into [1-9][0-9]* shared pages$' \
        '^\[mg-dedup\] memguest: verified [0-9]+ pages, 0 bad$' \
        '^RESULT vm:mg-dedup (PASS exit=0|FAIL exit=3)$' \
        '^\[mg-idle\] memguest: working set 64 pages ' \
        '^\[mg-idle\] memguest: verified [0-9]+ pages, 0 bad$' \
        '^RESULT vm:mg-idle (PASS exit=0|FAIL exit=3)$' \
        '^RESULT vm:mg-swap PASS exit=0$' \
        '^RESULT vm:mg-stress PASS exit=0$'
    # A VM of 2 vCPUs (the test guest parks vCPU 1 in a yield loop) beside two of one.
    scenario_case "guests-2vcpu-smp4" guests --smp 4 --config guests-vcpus
    log_case "guests 2-vCPU VM built and passed" guests-2vcpu-smp4 \
        '^\[cpu0\] VM duo \(id 0\): 2 vCPU\(s\)' '^RESULT vm:duo PASS exit=0$'
    scenario_case "isolation-smp2" isolation --smp 2
    scenario_case "isolation-smp1" isolation --smp 1
    # The hostile guest's SDBBP probes depend on each CPU model's debug mode (EJTAG stub).
    scenario_case "isolation-5KEc-smp2" isolation --cpu 5KEc --smp 2
    scenario_case "isolation-Loongson-3A4000-smp2" isolation --cpu Loongson-3A4000 --smp 2
    scenario_case "isolation-Octeon68XX-smp2" isolation --cpu Octeon68XX --smp 2
    fail_case "isolation-refuses-without-debug-stub" \
        '^RESULT isolation FAIL the EJTAG debug vector \(0xbfc00480\) does not hold' \
        qemu-system-mips64el -M malta -cpu MIPS64R2-generic -smp 1 -m 256 -nographic -nic none -vga none \
        -no-reboot -semihosting -kernel "${MIPSVISOR_OUT:-$ROOT/out}/mipsvisor.elf" \
        -append "scenario=isolation cpus=1 mem=256"
    scenario_case "balloon-smp2" balloon --smp 2
    scenario_case "balloon-smp1" balloon --smp 1
    saved_case "balloon: STAT lines and plot samples agree" balloon-smp2 --no-prompt
    # balloonguest's bad requests are refused and labelled deliberate where they are logged.
    log_case "balloon: deliberate bad requests labelled" balloon-smp2 \
        '^\[(big|small)\] balloonguest: sending deliberately bad requests' \
        '^\[cpu[0-9]+\] VM (big|small): balloon: refused .*\(deliberate: the test guest checks'

    # Swap: 64 MiB of guest RAM over a 40 MiB guest pool (pages out and back, nothing lost,
    # nothing leaked); idle: the tracked working set within 5 % of the guest's.
    scenario_case "swap-smp2" swap --smp 2
    scenario_case "swap-smp1-mem256" swap --smp 1 --mem 256
    saved_case "swap: STAT lines and plot samples agree, net of the store" swap-smp2 \
        --no-prompt
    scenario_case "idle-smp2" idle --smp 2
    scenario_case "idle-smp1" idle --smp 1
    # The operator console against the real services view, on the services CPU (smp 2) and
    # between slices (smp 1).
    local console_balloon=(big '^console: dedup is not running$'
        '^console: balloon big: target 8 MiB \(2048 pages\); the driver holds [0-9]+ pages now$'
        '^console: swap is not running in this scenario$'
        '^console: idle tracking is not running in this scenario$')
    console_case "console-balloon-smp2" balloon "${console_balloon[@]}" --smp 2
    console_case "console-balloon-smp1" balloon "${console_balloon[@]}" --smp 1
    console_case "console-dedup-smp2" dedup dup0 '^console: pages_sharing [0-9]+$' \
        '^console: the balloon service is not running in this scenario$' \
        '^console: swap is not running in this scenario$' \
        '^console: idle tracking is not running in this scenario$' --smp 2
    console_case "console-swap-smp2" swap sw0 '^console: dedup is not running$' \
        '^console: the balloon service is not running in this scenario$' \
        '^console: swap: [0-9]+ pages out, -?[0-9]+ saved net; outs [0-9]+ \([0-9]+ clean, no rewrite\), ins [0-9]+;' \
        '^console: sw0: [0-9]+ passes, working set [0-9]+ of [1-9][0-9]* pages \(touched in the last [0-9]+ passes\), [0-9]+ idle$' \
        --smp 2
    console_case "console-demo-smp2" demo web0 '^console: pages_sharing [0-9]+$' \
        '^console: balloon web0: target 8 MiB \(2048 pages\); the driver holds [0-9]+ pages now$' \
        '^console: swap: [0-9]+ pages out, -?[0-9]+ saved net; outs [0-9]+ ' \
        '^console: web0: [0-9]+ passes, working set [0-9]+ of [1-9][0-9]* pages ' --smp 2
    saved_case "console demo: table, STAT lines and plot samples agree, table last" \
        console-demo-smp2 --table
    step "tools/plot on the demo run" plot_run "$LOGS/qemu-console-demo-smp2.log" \
        dedup=31,119,180:300:10 balloon=230,120,20:100:1
    step "tools/plot on the dedup run" \
        plot_run "$LOGS/qemu-console-dedup-smp2.log" dedup=31,119,180:300:10
    step "tools/plot on the swap run" \
        plot_run "$LOGS/qemu-console-swap-smp2.log" swap=40,160,40:300:10
    bench_case "svc-bench-icount" svc-bench dedup_checksum_insns_per_page dedup_merge_insns \
        cow_break_insns balloon_inflate_insns_per_page swap_out_insns swap_in_insns \
        dedup_metadata_bytes_per_page
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
