# Guest user mode entry and return (global_asm! in user.rs).
#
# guest_rt_enter_user(pc = a0, sp = a1, arg = a2, status = a3) saves the kernel's
# callee-saved registers, loads EPC and Status (EXL set, KSU = user) and ERETs into user
# code with $a0 = arg. The kernel comes back when a trap handler points the frame's EPC at
# guest_rt_user_return with Status.KSU = kernel: that label restores the saved registers
# and returns to guest_rt_enter_user's caller with $v0/$v1 as the handler left them.

    .set noreorder
    .section .text.guest_rt_user, "ax"
    .globl guest_rt_enter_user
    .type guest_rt_enter_user, @function
guest_rt_enter_user:
    dla     $t0, guest_rt_kernel_ctx
    sd      $s0, 0*8($t0)
    sd      $s1, 1*8($t0)
    sd      $s2, 2*8($t0)
    sd      $s3, 3*8($t0)
    sd      $s4, 4*8($t0)
    sd      $s5, 5*8($t0)
    sd      $s6, 6*8($t0)
    sd      $s7, 7*8($t0)
    sd      $gp, 8*8($t0)
    sd      $sp, 9*8($t0)
    sd      $fp, 10*8($t0)
    sd      $ra, 11*8($t0)
    # Status first: EXL = 1 masks interrupts, so none can be taken between here and ERET
    # and overwrite EPC (an interrupt after an EPC write would make ERET return to the
    # interrupted kernel address in user mode).
    mtc0    $a3, $12                # Status: EXL = 1, KSU = user
    ehb
    dmtc0   $a0, $14                # EPC = user entry
    ehb
    move    $sp, $a1
    move    $a0, $a2
    # Nothing of the kernel's registers leaks into user mode.
    move    $v0, $zero
    move    $v1, $zero
    move    $a1, $zero
    move    $a2, $zero
    move    $a3, $zero
    move    $t0, $zero
    move    $gp, $zero
    move    $fp, $zero
    move    $ra, $zero
    eret
    .size guest_rt_enter_user, . - guest_rt_enter_user

    .globl guest_rt_user_return
    .type guest_rt_user_return, @function
guest_rt_user_return:
    dla     $t0, guest_rt_kernel_ctx
    ld      $s0, 0*8($t0)
    ld      $s1, 1*8($t0)
    ld      $s2, 2*8($t0)
    ld      $s3, 3*8($t0)
    ld      $s4, 4*8($t0)
    ld      $s5, 5*8($t0)
    ld      $s6, 6*8($t0)
    ld      $s7, 7*8($t0)
    ld      $gp, 8*8($t0)
    ld      $sp, 9*8($t0)
    ld      $fp, 10*8($t0)
    ld      $ra, 11*8($t0)
    jr      $ra
    nop
    .size guest_rt_user_return, . - guest_rt_user_return

    .section .bss.guest_rt_kernel_ctx, "aw", @nobits
    .balign 8
guest_rt_kernel_ctx:
    .space 12*8
    .set reorder
