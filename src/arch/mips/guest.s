# Guest entry and exit (assembled through global_asm! in guest.rs).
#
# `run_guest(ctx)` saves the host's callee-saved registers and Status in the GuestContext,
# publishes the context in this CPU's per-CPU area (percpu.rs), loads the guest's registers and
# ERETs into the guest, which runs in host user mode (KSU = user, UX = 1) with the ASID in
# ctx.entry_hi. When the guest takes any exception, the vectors (vectors.s) see KSU = user
# (and the debug-exit vector, after a guest SDBBP) come to `guest_exit_refill` /
# `guest_exit_general` / `guest_exit_debug` with the guest's k0 parked in
# ErrorEPC. The exit path parks the guest's k1 in DESAVE, saves every guest register and the
# exception registers into the context, restores the host registers and Status (EXL clear,
# kernel mode) and returns from `run_guest` to its Rust caller.
#
# The guest's k0/k1 are preserved like every other register: a guest kernel's own exception
# handler uses them and can be interrupted by host exits at any instruction.

    .macro GUEST_EXIT kind
    .set push
    .set noreorder
    .set noat
    dmtc0   $k1, $31                # DESAVE: guest k1 (k0 is in ErrorEPC already)
    ld      $k1, {ctx_word}($zero)  # this CPU's GuestContext (percpu.rs)
    sd      $1, 8($k1)
    sd      $2, 16($k1)
    sd      $3, 24($k1)
    sd      $4, 32($k1)
    sd      $5, 40($k1)
    sd      $6, 48($k1)
    sd      $7, 56($k1)
    sd      $8, 64($k1)
    sd      $9, 72($k1)
    sd      $10, 80($k1)
    sd      $11, 88($k1)
    sd      $12, 96($k1)
    sd      $13, 104($k1)
    sd      $14, 112($k1)
    sd      $15, 120($k1)
    sd      $16, 128($k1)
    sd      $17, 136($k1)
    sd      $18, 144($k1)
    sd      $19, 152($k1)
    sd      $20, 160($k1)
    sd      $21, 168($k1)
    sd      $22, 176($k1)
    sd      $23, 184($k1)
    sd      $24, 192($k1)
    sd      $25, 200($k1)
    sd      $28, 224($k1)
    sd      $29, 232($k1)
    sd      $30, 240($k1)
    sd      $31, 248($k1)
    dmfc0   $k0, $30                # guest k0 from ErrorEPC
    sd      $k0, 208($k1)
    dmfc0   $k0, $31                # guest k1 from DESAVE
    sd      $k0, 216($k1)
    mfhi    $k0
    sd      $k0, {off_hi}($k1)
    mflo    $k0
    sd      $k0, {off_lo}($k1)
    dmfc0   $k0, $14
    sd      $k0, {off_pc}($k1)
    mfc0    $k0, $12
    sd      $k0, {off_exit_status}($k1)
    mfc0    $k0, $13
    sd      $k0, {off_exit_cause}($k1)
    dmfc0   $k0, $8
    sd      $k0, {off_exit_bad_vaddr}($k1)
    li      $k0, \kind
    b       guest_return_to_host
    sd      $k0, {off_exit_kind}($k1)
    .set pop
    .endm

    .section .text.guest_switch, "ax"
    .set noreorder

# The fast lane for guest TLB exceptions (refill-cache misses, TLB invalid, TLB modified).
# Entered with the guest's k0 parked in ErrorEPC and its k1 still live. Saves only what an
# extern "C" call may clobber (at, v0-v1, a0-a7, t0-t3, t8-t9, gp, sp, ra, HI, LO) in this
# CPU's area (percpu.rs), calls the vCPU's fast handler (ctx.fast_handler) on the area's
# stack, still with EXL set, and restores. Handler result 0: the fault is served, return to
# the guest. Anything else: leave through the matching general exit below, as if the fast
# lane had not been there.
    .macro FAST_SAVE_REGS
    .irp n, 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,24,25,28,29,31
    sd      $\n, {fast_save}+8*\n($zero)
    .endr
    mfhi    $k1
    sd      $k1, {fast_save}+8*32($zero)
    mflo    $k1
    sd      $k1, {fast_save}+8*33($zero)
    .endm
    .macro FAST_RESTORE_REGS
    ld      $k1, {fast_save}+8*32($zero)
    mthi    $k1
    ld      $k1, {fast_save}+8*33($zero)
    mtlo    $k1
    .irp n, 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,24,25,28,29,31
    ld      $\n, {fast_save}+8*\n($zero)
    .endr
    .endm

    .globl guest_fast_refill
guest_fast_refill:
    .set noat
    dmtc0   $k1, $31                # park guest k1 in DESAVE
    b       1f
    li      $k1, {kind_refill}
    .globl guest_fast_general
guest_fast_general:
    dmtc0   $k1, $31
    li      $k1, {kind_general}
1:  sd      $k1, {fast_kind}($zero)
    FAST_SAVE_REGS
    ld      $sp, {fast_stack}($zero)
    ld      $a0, {ctx_word}($zero)
    ld      $a1, {fast_kind}($zero)
    ld      $t9, {off_fast_handler}($a0)
    jalr    $t9
    nop
    move    $k0, $v0
    FAST_RESTORE_REGS
    bnez    $k0, 2f
    dmfc0   $k1, $31                # guest k1 (delay slot; the exits below want it live)
    dmfc0   $k0, $30
    eret
2:  ld      $k0, {fast_kind}($zero)
    bnez    $k0, guest_exit_refill
    nop
    # fall through into the general exit
    .set at

    .globl guest_exit_general
guest_exit_general:
    GUEST_EXIT {kind_general}

    .globl guest_exit_refill
guest_exit_refill:
    GUEST_EXIT {kind_refill}

    .globl guest_exit_debug
guest_exit_debug:
    GUEST_EXIT {kind_debug}

guest_return_to_host:
    .set noat
    ld      $16, {off_host}+0($k1)
    ld      $17, {off_host}+8($k1)
    ld      $18, {off_host}+16($k1)
    ld      $19, {off_host}+24($k1)
    ld      $20, {off_host}+32($k1)
    ld      $21, {off_host}+40($k1)
    ld      $22, {off_host}+48($k1)
    ld      $23, {off_host}+56($k1)
    ld      $30, {off_host}+64($k1)
    ld      $28, {off_host}+72($k1)
    ld      $29, {off_host}+80($k1)
    ld      $31, {off_host}+88($k1)
    ld      $k0, {off_host}+96($k1)  # host Status: kernel mode, EXL clear
    mtc0    $k0, $12
    ehb
    jr      $ra
    nop
    .set at

# extern "C" fn run_guest(ctx: *mut GuestContext)
    .globl run_guest
    .type run_guest, @function
run_guest:
    .set noat
    sd      $16, {off_host}+0($a0)
    sd      $17, {off_host}+8($a0)
    sd      $18, {off_host}+16($a0)
    sd      $19, {off_host}+24($a0)
    sd      $20, {off_host}+32($a0)
    sd      $21, {off_host}+40($a0)
    sd      $22, {off_host}+48($a0)
    sd      $23, {off_host}+56($a0)
    sd      $30, {off_host}+64($a0)
    sd      $28, {off_host}+72($a0)
    sd      $29, {off_host}+80($a0)
    sd      $31, {off_host}+88($a0)
    mfc0    $t0, $12
    sd      $t0, {off_host}+96($a0)
    # EXL first: from here on no interrupt can arrive, and we stay in kernel mode until
    # ERET even though KSU already says user.
    ld      $t0, {off_entry_status}($a0)
    mtc0    $t0, $12
    ehb
    sd      $a0, {ctx_word}($zero)  # for the exit path (percpu.rs)
    ld      $t0, {off_entry_hi}($a0)
    dmtc0   $t0, $10
    ld      $t0, {off_pc}($a0)
    dmtc0   $t0, $14
    ld      $t0, {off_hi}($a0)
    mthi    $t0
    ld      $t0, {off_lo}($a0)
    mtlo    $t0
    move    $k1, $a0
    ld      $1, 8($k1)
    ld      $2, 16($k1)
    ld      $3, 24($k1)
    ld      $4, 32($k1)
    ld      $5, 40($k1)
    ld      $6, 48($k1)
    ld      $7, 56($k1)
    ld      $8, 64($k1)
    ld      $9, 72($k1)
    ld      $10, 80($k1)
    ld      $11, 88($k1)
    ld      $12, 96($k1)
    ld      $13, 104($k1)
    ld      $14, 112($k1)
    ld      $15, 120($k1)
    ld      $16, 128($k1)
    ld      $17, 136($k1)
    ld      $18, 144($k1)
    ld      $19, 152($k1)
    ld      $20, 160($k1)
    ld      $21, 168($k1)
    ld      $22, 176($k1)
    ld      $23, 184($k1)
    ld      $24, 192($k1)
    ld      $25, 200($k1)
    ld      $28, 224($k1)
    ld      $29, 232($k1)
    ld      $30, 240($k1)
    ld      $31, 248($k1)
    ld      $k0, 208($k1)
    ld      $k1, 216($k1)
    eret
    .set at
    .size run_guest, . - run_guest
