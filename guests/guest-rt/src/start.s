# Guest entry (assembled through global_asm! in lib.rs).
#
# The hypervisor starts the guest at the ELF entry in the KSEG0 window with the reset CP0
# state (BEV and ERL set, interrupts off). Nothing else is promised: no register holds a
# useful value and RAM outside the loaded segments may hold anything, so .bss is cleared
# here before any Rust code runs. No stack exists until $sp is set below.

    .section .text.start, "ax"
    .set noreorder
    .globl _start
    .type _start, @function
_start:
    # Only vCPU 0 runs the guest: the others (if the VM has several) would share its stack
    # and .bss, so they park in a yield loop. VM info key 1 = vCPU number; an error (a
    # negative result) counts as vCPU 0.
    ori     $v0, $zero, 3           # VM info
    ori     $a0, $zero, 1           # key 1: vCPU number
    .word   0x42000028              # HYPCALL
    bgtz    $v0, 4f
    nop
    dla     $t0, __bss_start
    dla     $t1, __bss_end
1:  sltu    $t2, $t0, $t1
    beqz    $t2, 2f
    nop
    sd      $zero, 0($t0)
    b       1b
    daddiu  $t0, $t0, 8

2:  dla     $sp, __stack_top
    dla     $gp, _gp
    move    $fp, $zero
    move    $ra, $zero              # backtraces stop here
    jal     guest_main              # defined by guest_rt::entry!; never returns
    nop
3:  b       3b
    nop

4:  ori     $v0, $zero, 4           # yield, forever
    .word   0x42000028
    b       4b
    nop
    .size _start, . - _start
