# Exception vectors and the common save/restore path (assembled via global_asm! in trap.rs).
#
# EBase points at `exception_vectors` (4 KiB aligned, first thing in the image):
#   +0x000 TLB refill (32-bit segments), +0x080 XTLB refill, +0x100 cache error,
#   +0x180 general exception, +0x200 interrupt (only used if Cause.IV were set), +0x280
#   debug exit (entered from the EJTAG stub, not by the CPU itself).
# Every entry saves the full register state into a TrapFrame (layout in trap.rs, offsets
# passed in as constants), calls `trap_entry(frame)` in Rust and restores everything the
# handler may have changed (GPRs, HI/LO, EPC, Status) before ERET.
#
# Register use: k0/k1 are the only registers free on entry. A kernel-mode exception pushes
# the frame below the interrupted sp (so nesting-free kernel code keeps its stack); a
# user-mode one is a guest exit and leaves through guest.s (see exc_general_entry). The
# user-mode branch of SAVE_FRAME (kernel stack top from the kstack table) stays as a
# fallback that nothing reaches.
# Handlers run with Status.EXL still set: interrupts stay off and a nested exception would
# not update EPC, so Rust handlers must not fault (trap.rs reports it if one does).

    .macro SAVE_FRAME kind
    .set push
    .set noreorder
    .set noat
    mfc0    $k0, $12
    andi    $k0, $k0, 0x18          # Status.KSU of the interrupted context
    beqz    $k0, 1f
    move    $k1, $sp
    mfc0    $k0, $15, 1             # from user mode: kernel stack of this CPU
    andi    $k0, $k0, 0x3ff
    dsll    $k0, $k0, 3
    dla     $k1, {kstack_top}
    daddu   $k1, $k1, $k0
    ld      $k1, 0($k1)
1:  daddiu  $k1, $k1, -{frame_size}
    sd      $zero, 0($k1)           # $0, k0, k1: not saved, shown as 0 in reports
    sd      $zero, 208($k1)
    sd      $zero, 216($k1)
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
    mfhi    $k0
    sd      $k0, {off_hi}($k1)
    mflo    $k0
    sd      $k0, {off_lo}($k1)
    dmfc0   $k0, $14
    sd      $k0, {off_epc}($k1)
    mfc0    $k0, $12
    sd      $k0, {off_status}($k1)
    mfc0    $k0, $13
    sd      $k0, {off_cause}($k1)
    dmfc0   $k0, $8
    sd      $k0, {off_badvaddr}($k1)
    li      $k0, \kind
    sd      $k0, {off_kind}($k1)
    move    $sp, $k1
    b       exc_call_rust
    nop
    .set pop
    .endm

    .section .text.vectors, "ax"
    .set noreorder
    .balign 4096
    .globl exception_vectors
exception_vectors:
    j       exc_refill_entry
    nop
    .org 0x080
# XTLB refill. First try this CPU's refill cache (percpu.rs: wired TLB entry 0 maps the
# CPU's own area at the top of kseg3, so its addresses are small offsets from zero). The
# slot is VPN2 % 256, straight from Context (PTEBase is 0, BadVPN2 = VA[31:13] << 4); it
# holds the tag (EntryHi: VPN2 + host ASID) and both EntryLo of a root entry the vCPU loop
# installed before. On a hit, write it with TLBWR and return straight to the guest. A miss
# (always, for the host: no slot carries a kernel-segment tag) goes on below.
    .set noat
    dmtc0   $k0, $30                # park k0 (guest or host)
    dmfc0   $k0, $4                 # Context
    dmtc0   $k1, $31                # park k1
    andi    $k1, $k0, {slot_offset_mask}
    ld      $k0, {attempts}($zero)  # count the attempt
    daddiu  $k0, $k0, 1
    sd      $k0, {attempts}($zero)
    lw      $k0, {slot_lo0}($k1)
    dmtc0   $k0, $2
    lw      $k0, {slot_lo1}($k1)
    dmtc0   $k0, $3
    ld      $k1, {slot_tag}($k1)
    dmfc0   $k0, $10
    bne     $k0, $k1, refill_cache_miss
    dmfc0   $k0, $30                # k0 back (still parked for the miss path)
    ehb                             # EntryLo writes settle before TLBWR
    tlbwr
    dmfc0   $k1, $31
    eret
    .set at
    .org 0x100
    j       exc_cache_error_entry
    nop
    .org 0x180
    j       exc_general_entry
    nop
    .org 0x200
    j       exc_general_entry
    nop
    .org {debug_exit_offset}
# Debug exit: the EJTAG stub in the boot ROM (debug_vector.s) comes here after a debug
# exception (SDBBP) with EXL set, EPC = DEPC and every GPR as it was. From user mode it is a
# guest exit like the others. In host code the only SDBBP is a semihosting call that QEMU
# did not take (no -semihosting): it is skipped, as if no debugger were attached, so the
# caller's fallback (semihost::exit halts) runs instead of a loop of debug exceptions.
exc_debug_entry:
    .set noat
    dmtc0   $k0, $30
    mfc0    $k0, $12
    andi    $k0, $k0, 0x18
    beqz    $k0, 3f
    nop
    j       guest_exit_debug        # j: guest.s may be linked anywhere in the image
    nop
3:  dmfc0   $k0, $14
    daddiu  $k0, $k0, 4
    dmtc0   $k0, $14
    dmfc0   $k0, $30
    ehb
    eret
    .set at

# An exception from user mode comes from a guest (the firmware runs nothing else in user
# mode): it leaves through guest.s, which needs the guest's k0 parked in ErrorEPC first.
exc_general_entry:
    .set noat
    dmtc0   $k0, $30
    mfc0    $k0, $12
    andi    $k0, $k0, 0x18
    beqz    $k0, 3f
    mfc0    $k0, $13                # (delay slot) guest: TLB Mod/TLBL/TLBS take the fast lane
    andi    $k0, $k0, 0x7c
    addiu   $k0, $k0, -4            # ExcCode 1, 2, 3 -> 0, 4, 8
    sltiu   $k0, $k0, 9
    bnez    $k0, 4f
    nop
    j       guest_exit_general       # j: guest.s may be linked anywhere in the image
    nop
4:  j       guest_fast_general
    nop
3:  .set at
    SAVE_FRAME {kind_general}
# Refill cache miss: k0 holds its own value again and is parked in ErrorEPC, k1 is parked
# in DESAVE. The host goes to the general save path; a guest exits through guest.s.
refill_cache_miss:
    .set noat
    mfc0    $k0, $12
    andi    $k0, $k0, 0x18
    beqz    $k0, 3f
    dmfc0   $k1, $31                # k1 back: the guest paths park it themselves
    j       guest_fast_refill       # j: guest.s may be linked anywhere in the image
    nop
3:  .set at
    SAVE_FRAME {kind_refill}
exc_refill_entry:
    .set noat
    dmtc0   $k0, $30
    mfc0    $k0, $12
    andi    $k0, $k0, 0x18
    beqz    $k0, 3f
    nop
    j       guest_exit_refill       # j: guest.s may be linked anywhere in the image
    nop
3:  .set at
    SAVE_FRAME {kind_refill}
exc_cache_error_entry:
    SAVE_FRAME {kind_cache_error}

exc_call_rust:
    .set noat
    dla     $gp, _gp
    move    $a0, $sp
    dla     $t9, {trap_entry}
    jalr    $t9
    nop

    move    $k1, $sp
    ld      $k0, {off_hi}($k1)
    mthi    $k0
    ld      $k0, {off_lo}($k1)
    mtlo    $k0
    ld      $k0, {off_epc}($k1)
    dmtc0   $k0, $14
    ld      $k0, {off_status}($k1)
    mtc0    $k0, $12
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
    ehb                             # EPC/Status writes above must settle before ERET
    eret
    .set at
