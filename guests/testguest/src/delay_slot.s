# Delay-slot tests of the test guest (global_asm! in delay_slot.rs). Each function puts a
# trapping instruction in a branch delay slot, so the hypervisor must emulate it (or
# deliver its exception with Cause.BD and EPC = the branch) and still follow the branch.
# 0xbad in $v0 means control went where it must not.

    .section .text.testguest_delay_slot, "ax"
    .set noreorder

# u64 (void): Status read by MFC0 in the delay slot of a taken BEQ.
    .globl testguest_ds_mfc0_taken
testguest_ds_mfc0_taken:
    ori     $v0, $zero, 0xbad
    beq     $zero, $zero, 1f
    mfc0    $v0, $12
    ori     $v0, $zero, 0xbad       # skipped when the branch is followed
1:  jr      $ra
    nop

# u64 (void): Status read by MFC0 in the delay slot of a BNE that is not taken.
    .globl testguest_ds_mfc0_not_taken
testguest_ds_mfc0_not_taken:
    ori     $v0, $zero, 0xbad
    bne     $zero, $zero, 1f
    mfc0    $v0, $12
    jr      $ra
    nop
1:  ori     $v0, $zero, 0xbad
    jr      $ra
    nop

# u64 (void): Status read by MFC0 in the delay slot of a JALR; the callee returns through
# $ra, which must point past the delay slot.
    .globl testguest_ds_mfc0_jalr
testguest_ds_mfc0_jalr:
    daddiu  $sp, $sp, -16
    sd      $ra, 0($sp)
    dla     $t9, 2f
    jalr    $t9
    mfc0    $v0, $12
    ld      $ra, 0($sp)
    jr      $ra
    daddiu  $sp, $sp, 16
2:  jr      $ra
    nop

# u64 (u64 addr): LD from addr in the delay slot of a taken BEQ; addr is a mapped kernel
# segment address not in the TLB, so the load takes a TLB refill with Cause.BD set.
    .globl testguest_ds_load_taken
testguest_ds_load_taken:
    move    $v0, $zero
    beq     $zero, $zero, 1f
    ld      $v0, 0($a0)
    ori     $v0, $zero, 0xbad
1:  jr      $ra
    nop

    .set reorder
