# Boot entry of every CPU (assembled through global_asm! in boot.rs).
#
# QEMU's Malta loader (and YAMON) start every CPU at the ELF entry with
#   a1 = argv, a2 = envp (arrays of 32-bit sign-extended pointers), a3 = low RAM size.
# a0 = argc (YAMON, QEMU without -semihosting; with -semihosting QEMU leaves it unset).
#
# Register use: s0 = CPU number (EBase.CPUNum), s1..s3 = saved a1..a3, s4 = saved a0
# (boot CPU only),
# k0/k1/v0 = scratch. No stack exists until `enter_rust`.
#
# Each CPU points EBase at the vectors (vectors.s) before it enters Rust.
# CPU 0 clears .bss, then enters Rust. The other CPUs spin on the release word (kept in
# .data, so clearing .bss cannot race with it and a warm reset cannot leave it set) until
# CPU 0 has set up console, vectors and memory, then enter Rust on their own stacks.

    .section .text.boot, "ax"
    .set noreorder
    .globl _start
    .type _start, @function
_start:
    # Kernel mode, EXL/ERL/IE clear, interrupts masked, CU0 and 64-bit segments (KX, UX)
    # on. BEV stays set until this CPU has pointed EBase at our vectors.
    li      $k0, {status_boot}
    mtc0    $k0, $12
    ehb

    mfc0    $s0, $15, 1             # EBase: CPUNum in bits 9:0
    andi    $s0, $s0, 0x3ff
    sltiu   $k0, $s0, {max_cpus}
    beqz    $k0, park               # more CPUs than we have stacks for: keep them parked
    nop
    bnez    $s0, wait_release
    nop

    move    $s1, $a1
    move    $s2, $a2
    move    $s3, $a3
    move    $s4, $a0

    dla     $k0, __bss_start
    dla     $k1, __bss_end
1:  sltu    $v0, $k0, $k1
    beqz    $v0, enter_rust
    nop
    sd      $zero, 0($k0)
    b       1b
    daddiu  $k0, $k0, 8

wait_release:
    move    $s1, $zero
    move    $s2, $zero
    move    $s3, $zero
    move    $s4, $zero
    dla     $k0, {release}
2:  lw      $k1, 0($k0)
    beqz    $k1, 2b
    nop
    sync                            # acquire: pairs with the release store in smp.rs

enter_rust:
    # Exception base: EBase.ExceptionBase (bits 29:12) = our vector block; CPUNum and the
    # fixed bits are kept. Written while BEV is still set (the PRA leaves EBase writes with
    # BEV clear undefined), then BEV is cleared so exceptions use the new vectors.
    dla     $k0, exception_vectors
    li      $v0, {ebase_mask}
    and     $k0, $k0, $v0
    mfc0    $k1, $15, 1
    nor     $v0, $v0, $zero
    and     $k1, $k1, $v0
    or      $k1, $k1, $k0
    mtc0    $k1, $15, 1
    ehb
    mfc0    $k0, $12
    li      $k1, ~{status_bev}
    and     $k0, $k0, $k1
    mtc0    $k0, $12
    ehb

    dla     $gp, _gp
    dla     $sp, boot_stacks
    daddiu  $k0, $s0, 1
    dsll    $k0, $k0, {stack_shift}
    daddu   $sp, $sp, $k0           # sp = top of this CPU's stack
    move    $a0, $s0
    move    $a1, $s1
    move    $a2, $s2
    move    $a3, $s3
    move    $a4, $sp
    move    $a5, $s4
    dla     $t9, {rust_entry}
    jalr    $t9
    nop
park:
    wait
    b       park
    nop
    .size _start, . - _start

    .section .bss.boot_stacks, "aw", @nobits
    .balign 16
boot_stacks:
    .space {max_cpus} << {stack_shift}
