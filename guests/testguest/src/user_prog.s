# The test guest's user program (global_asm! in user.rs). It runs in guest user mode at
# USER_CODE_VA through the guest's own TLB, so it is position independent: only relative
# branches, no absolute addresses but the user data segment's fixed VA.
#
# $a0 = mode:
#   0  fill USER_WORDS words at USER_DATA_VA with w(i) = (i << 40) ^ (i << 20) ^ i ^ 0x5a5a,
#      read them back into s = rotl(s, 1) + w, touch the stack, write a line by syscall 1,
#      exit by syscall 2 with a0 = s
#   1  load from the kernel window (0x4000_1000): must be an address error
#   2  store into its own (read-only) code page: must be a TLB modified exception
#   3  MFC0 Status: must be Coprocessor Unusable
#   4  HYPCALL: must be Coprocessor Unusable
# Modes 1..4 exit with 0xdead if the forbidden instruction did not trap.

    .section .text.user_prog, "ax"
    .balign 4096
    .set noreorder
    .globl testguest_user_prog
testguest_user_prog:
    bnez    $a0, 10f
    nop
    lui     $t0, {data_hi}
    ori     $t1, $zero, {words}
    move    $t2, $zero
1:  dsll    $t3, $t2, 40
    dsll    $t8, $t2, 20
    xor     $t3, $t3, $t8
    xor     $t3, $t3, $t2
    xori    $t3, $t3, 0x5a5a
    dsll    $t8, $t2, 3
    daddu   $t8, $t8, $t0
    sd      $t3, 0($t8)
    daddiu  $t2, $t2, 1
    bne     $t2, $t1, 1b
    nop
    move    $t2, $zero
    move    $v1, $zero
2:  dsll    $t8, $t2, 3
    daddu   $t8, $t8, $t0
    ld      $t3, 0($t8)
    dsrl32  $t8, $v1, 31            # rotate left by 1
    dsll    $v1, $v1, 1
    or      $v1, $v1, $t8
    daddu   $v1, $v1, $t3
    daddiu  $t2, $t2, 1
    bne     $t2, $t1, 2b
    nop
    sd      $v1, -8($sp)
    ld      $v1, -8($sp)
    bal     3f
    nop
3:  daddiu  $a0, $ra, msg - 3b
    ori     $a1, $zero, msg_end - msg
    ori     $v0, $zero, 1
    syscall
    move    $a0, $v1
    ori     $v0, $zero, 2
    syscall
4:  b       4b
    nop

10: ori     $t0, $zero, 1
    bne     $a0, $t0, 11f
    nop
    lui     $t1, 0x4000
    ld      $t2, 0x1000($t1)
    b       99f
    nop
11: ori     $t0, $zero, 2
    bne     $a0, $t0, 12f
    nop
    bal     5f
    nop
5:  sw      $zero, 0($ra)
    b       99f
    nop
12: ori     $t0, $zero, 3
    bne     $a0, $t0, 13f
    nop
    mfc0    $t2, $12
    b       99f
    nop
13: ori     $t0, $zero, 4
    bne     $a0, $t0, 99f
    nop
    .word   0x42000028
99: ori     $a0, $zero, 0xdead
    ori     $v0, $zero, 2
    syscall
6:  b       6b
    nop
msg:
    .ascii  "testguest: user mode says hello through its own TLB\n"
msg_end:
    .balign 4096
    .set reorder
