# Guest exception vectors and the common save/restore path (global_asm! in trap.rs).
#
# guest_rt_vectors is 4 KiB aligned so that EBase can point at it: TLB refill at +0x000,
# XTLB refill at +0x080 (cannot occur for a mipsvisor guest, handled the same way),
# general exceptions at +0x180, interrupts with Cause.IV at +0x200.
#
# Each vector moves to the trap stack (or, if the exception hit code already running on
# the trap stack, pushes below the current $sp), saves all GPRs, HI, LO and EPC in a
# TrapFrame (layout in trap.rs), calls guest_rt_trap(frame), restores and ERETs. k0/k1 are
# the kernel's scratch registers as on hardware; the hypervisor preserves them across the
# CP0 instructions that trap to it.

    .set noreorder
    .set noat

    .macro TRAP_ENTRY kind
    move    $k1, $sp
    dla     $k0, __trap_stack_bottom
    sltu    $k0, $sp, $k0
    bnez    $k0, 1f                 # below the trap stack: fresh frame at its top
    nop
    dla     $k0, __trap_stack_top
    sltu    $k0, $sp, $k0
    bnez    $k0, 2f                 # on the trap stack already: nest below $sp
    nop
1:  dla     $sp, __trap_stack_top
2:  daddiu  $sp, $sp, -{frame_size}
    b       guest_rt_trap_save
    ori     $k0, $zero, \kind
    .endm

    .section .text.vectors, "ax"
    .balign 4096
    .globl guest_rt_vectors
guest_rt_vectors:
    TRAP_ENTRY 0                    # +0x000 TLB refill
    .org 0x080
    TRAP_ENTRY 0                    # +0x080 XTLB refill
    .org 0x180
    TRAP_ENTRY 1                    # +0x180 general
    .org 0x200
    TRAP_ENTRY 2                    # +0x200 interrupt (Cause.IV)

# $sp = new frame, $k1 = interrupted $sp, $k0 = vector kind.
guest_rt_trap_save:
    sd      $k0, {kind_off}($sp)
    sd      $k1, 29*8($sp)
    sd      $1, 1*8($sp)
    sd      $2, 2*8($sp)
    sd      $3, 3*8($sp)
    sd      $4, 4*8($sp)
    sd      $5, 5*8($sp)
    sd      $6, 6*8($sp)
    sd      $7, 7*8($sp)
    sd      $8, 8*8($sp)
    sd      $9, 9*8($sp)
    sd      $10, 10*8($sp)
    sd      $11, 11*8($sp)
    sd      $12, 12*8($sp)
    sd      $13, 13*8($sp)
    sd      $14, 14*8($sp)
    sd      $15, 15*8($sp)
    sd      $16, 16*8($sp)
    sd      $17, 17*8($sp)
    sd      $18, 18*8($sp)
    sd      $19, 19*8($sp)
    sd      $20, 20*8($sp)
    sd      $21, 21*8($sp)
    sd      $22, 22*8($sp)
    sd      $23, 23*8($sp)
    sd      $24, 24*8($sp)
    sd      $25, 25*8($sp)
    sd      $28, 28*8($sp)
    sd      $30, 30*8($sp)
    sd      $31, 31*8($sp)
    mfhi    $t0
    sd      $t0, {hi_off}($sp)
    mflo    $t0
    sd      $t0, {lo_off}($sp)
    dmfc0   $t0, $14                # EPC
    sd      $t0, {epc_off}($sp)

    dla     $gp, _gp
    dla     $t9, guest_rt_trap
    jalr    $t9
    move    $a0, $sp                # delay slot: the frame is the argument

    ld      $t0, {epc_off}($sp)
    dmtc0   $t0, $14                # EPC (the handler may have moved it)
    ld      $t0, {hi_off}($sp)
    mthi    $t0
    ld      $t0, {lo_off}($sp)
    mtlo    $t0
    ld      $1, 1*8($sp)
    ld      $2, 2*8($sp)
    ld      $3, 3*8($sp)
    ld      $4, 4*8($sp)
    ld      $5, 5*8($sp)
    ld      $6, 6*8($sp)
    ld      $7, 7*8($sp)
    ld      $8, 8*8($sp)
    ld      $9, 9*8($sp)
    ld      $10, 10*8($sp)
    ld      $11, 11*8($sp)
    ld      $12, 12*8($sp)
    ld      $13, 13*8($sp)
    ld      $14, 14*8($sp)
    ld      $15, 15*8($sp)
    ld      $16, 16*8($sp)
    ld      $17, 17*8($sp)
    ld      $18, 18*8($sp)
    ld      $19, 19*8($sp)
    ld      $20, 20*8($sp)
    ld      $21, 21*8($sp)
    ld      $22, 22*8($sp)
    ld      $23, 23*8($sp)
    ld      $24, 24*8($sp)
    ld      $25, 25*8($sp)
    ld      $28, 28*8($sp)
    ld      $30, 30*8($sp)
    ld      $31, 31*8($sp)
    ld      $sp, 29*8($sp)
    eret
    .set at
    .set reorder
