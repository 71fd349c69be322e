# The vCPU self-test guest (a flat image, assembled through global_asm! in
# vcpu_test_guest.rs and copied into guest RAM at GPA 0x1000; the host never runs it).
#
# It exercises the trap-and-emulate paths one stage at a time and exits with status 0, or
# with the number of the stage that went wrong (100 + ExcCode for an unexpected exception):
#   1  KSEG0-window memory: a pattern over 64 pages at GPA 0x20_0000, written and checked
#   2  mapped kernel segment: TLBWI of 0x6000_0000 -> GPA 0x30_0000, seen through the window
#   3  guest TLB refills: 16 pairs at 0x6001_0000.. filled by the guest's own refill handler
#   4  guest user mode: ERET to useg 0x0040_0000 (ASID 5), stores there, SYSCALL back
#   5  guest timer: Compare interrupts wake WAIT five times
#   6  user mode may not touch the kernel window: the address error reaches the guest
#   7  pages swapped out by the host while mapped come back with their contents
#   8  devices: 16550 output and LSR, virtio-mmio identification, read-only slot
# Layout (offsets in the image; GPA = 0x1000 + offset, guest VA = 0x4000_0000 + GPA):
#   0x0000 entry, 0x1000 exception vectors (EBase 0x4000_2000), 0x2000 user code page,
#   0x3000 main, 0x3f00 message. Counters live at GPA 0x8_0000 (refills at +0, timer
#   interrupts at +4, expected-address-error flag at +8). Only PC-relative branches are used
#   inside the image, and absolute addresses are the fixed guest addresses above.

    .section .rodata.vcpu_test_guest, "a"
    .balign 4096
    .globl vcpu_test_guest_start
vcpu_test_guest_start:
    .set push
    .set noreorder
    .set noat
    b       vtg_main
    nop

    .org 0x1000
# EBase + 0x000: TLB refill for the mapped kernel segment: the even page of the faulting
# pair goes to GPA 0x40_0000 + (VA - 0x6000_0000) rounded down to the pair, odd page next.
vtg_refill:
    dmfc0   $k0, $8
    lui     $k1, 0x6000
    dsubu   $k0, $k0, $k1
    daddiu  $k1, $zero, -8192
    and     $k0, $k0, $k1
    lui     $k1, 0x40
    daddu   $k0, $k0, $k1
    dsrl    $k0, $k0, 12
    dsll    $k0, $k0, 6
    ori     $k0, $k0, 0x1e          # C = 3, D, V
    dmtc0   $k0, $2
    daddiu  $k0, $k0, 0x40          # next frame
    dmtc0   $k0, $3
    tlbwr
    lui     $k1, 0x4008
    lw      $k0, 0($k1)
    addiu   $k0, $k0, 1
    sw      $k0, 0($k1)
    eret

    .org 0x1180
# EBase + 0x180: general exceptions.
vtg_general:
    mfc0    $k0, $13
    andi    $k0, $k0, 0x7c
    beqz    $k0, vtg_timer_irq
    nop
    addiu   $k1, $zero, 0x20        # Sys
    beq     $k0, $k1, vtg_syscall
    nop
    addiu   $k1, $zero, 0x10        # AdEL
    beq     $k0, $k1, vtg_address_error
    nop
vtg_unexpected:
    srl     $k0, $k0, 2
    b       vtg_exit
    addiu   $a0, $k0, 100

vtg_timer_irq:
    mfc0    $k0, $9
    lui     $k1, 0x2
    addu    $k0, $k0, $k1           # next interrupt 0x20000 Count ticks later
    mtc0    $k0, $11                # acknowledges this one
    lui     $k1, 0x4008
    lw      $k0, 4($k1)
    addiu   $k0, $k0, 1
    sw      $k0, 4($k1)
    eret

# SYSCALL from user mode: back to kernel mode and on to the next stage.
vtg_syscall:
    mtc0    $zero, $12
    b       vtg_after_user
    nop

# Address error: expected only when the flag at GPA 0x8_0008 is set; then user mode is
# left for the next stage.
vtg_address_error:
    lui     $k1, 0x4008
    lw      $k0, 8($k1)
    beqz    $k0, vtg_unexpected
    addiu   $k0, $zero, 0x10
    sw      $zero, 8($k1)
    mtc0    $zero, $12
    b       vtg_after_address_error
    nop

# a0 = exit status.
vtg_exit:
    addiu   $v0, $zero, 2
    .word   0x42000028              # HYPCALL
1:  b       1b
    nop

    .org 0x2000
# User code page (mapped at 0x0040_0000, ASID 5; the data page 0x0040_1000 is GPA 0x50_0000).
vtg_user:
    lui     $t0, 0x0040
    ori     $t0, $t0, 0x1000
    lui     $t1, 0x5a5a
    ori     $t1, $t1, 0x1234
    sw      $t1, 0($t0)
    lw      $t2, 0($t0)
    bne     $t1, $t2, 1f
    nop
    sw      $t2, 8($t0)
    syscall
1:  break

    .org 0x2100
# Stage 6 user code: a load from the kernel window must fault.
vtg_user_forbidden:
    lui     $t0, 0x4000
    lw      $t1, 0($t0)
    break                           # not reached

    .org 0x3000
vtg_main:
    lui     $sp, 0x4010
    lui     $t0, 0x4000
    ori     $t0, $t0, 0x2000
    mtc0    $t0, $15, 1             # EBase: vectors at 0x4000_2000
    mtc0    $zero, $12              # BEV and ERL off, kernel mode, interrupts off
    lui     $t0, 0x4008
    sd      $zero, 0($t0)
    sd      $zero, 8($t0)

    # Stage 1: pattern over 64 pages of the window.
    addiu   $a0, $zero, 1
    lui     $t0, 0x4020
    lui     $t1, 0x4024
    lui     $t3, 0xa5a5
1:  xor     $t2, $t0, $t3
    sd      $t2, 0($t0)
    daddiu  $t0, $t0, 8
    bne     $t0, $t1, 1b
    nop
    lui     $t0, 0x4020
2:  ld      $t2, 0($t0)
    xor     $t2, $t2, $t3
    bne     $t2, $t0, vtg_exit
    daddiu  $t0, $t0, 8
    bne     $t0, $t1, 2b
    nop

    # Stage 2: TLB entry 0 maps 0x6000_0000 (ASID 1) to GPA 0x30_0000/0x30_1000.
    addiu   $a0, $zero, 2
    mtc0    $zero, $5               # PageMask: 4 KiB
    lui     $t0, 0x6000
    ori     $t0, $t0, 1
    dmtc0   $t0, $10                # EntryHi
    addiu   $t0, $zero, 0x300
    dsll    $t0, $t0, 6
    ori     $t0, $t0, 0x1e
    dmtc0   $t0, $2
    daddiu  $t0, $t0, 0x40
    dmtc0   $t0, $3
    mtc0    $zero, $0               # Index 0
    tlbwi
    addiu   $t0, $zero, 1
    mtc0    $t0, $6                 # Wired = 1: TLBWR leaves entry 0 alone
    lui     $t0, 0x6000
    lui     $t1, 0x1234
    ori     $t1, $t1, 0x5678
    sw      $t1, 0x1008($t0)
    lui     $t0, 0x4030
    lw      $t2, 0x1008($t0)
    bne     $t1, $t2, vtg_exit
    nop

    # Stage 3: 16 pairs from 0x6001_0000, each filled by one guest refill.
    addiu   $a0, $zero, 3
    lui     $t0, 0x6001
    lui     $t1, 0x6003
1:  sd      $t0, 0($t0)
    daddiu  $t0, $t0, 0x2000
    bne     $t0, $t1, 1b
    nop
    lui     $t0, 0x4041             # GPA 0x41_0000 = 0x6001_0000's frame
    lui     $t1, 0x6001
    lui     $t3, 0x4043
2:  ld      $t2, 0($t0)
    bne     $t2, $t1, vtg_exit
    daddiu  $t1, $t1, 0x2000
    daddiu  $t0, $t0, 0x2000
    bne     $t0, $t3, 2b
    nop
    lui     $t0, 0x4008
    lw      $t1, 0($t0)
    addiu   $t2, $zero, 16
    bne     $t1, $t2, vtg_exit
    nop

    # Stage 4: user mode at 0x0040_0000 under ASID 5 (TLB entry 1).
    addiu   $a0, $zero, 4
    lui     $t0, 0x0040
    ori     $t0, $t0, 5
    dmtc0   $t0, $10
    addiu   $t0, $zero, 0x3         # GPA 0x3000: user code, read-only (C = 3, V)
    dsll    $t0, $t0, 6
    ori     $t0, $t0, 0x1a
    dmtc0   $t0, $2
    addiu   $t0, $zero, 0x500       # GPA 0x50_0000: user data (C = 3, D, V)
    dsll    $t0, $t0, 6
    ori     $t0, $t0, 0x1e
    dmtc0   $t0, $3
    addiu   $t0, $zero, 1
    mtc0    $t0, $0
    tlbwi
    lui     $t0, 0x0040
    dmtc0   $t0, $14                # EPC
    addiu   $t0, $zero, 0x12        # UM | EXL
    mtc0    $t0, $12
    eret
vtg_after_user:
    addiu   $a0, $zero, 4
    lui     $t0, 0x4050
    lw      $t1, 8($t0)
    lui     $t2, 0x5a5a
    ori     $t2, $t2, 0x1234
    bne     $t1, $t2, vtg_exit
    nop

    # Stage 5: five guest timer interrupts, each ending a WAIT.
    addiu   $a0, $zero, 5
    mfc0    $t0, $9
    lui     $t1, 0x2
    addu    $t0, $t0, $t1
    mtc0    $t0, $11
    ori     $t0, $zero, 0x8001      # IM7 | IE
    mtc0    $t0, $12
    lui     $t2, 0x4008
1:  wait
    lw      $t1, 4($t2)
    sltiu   $t1, $t1, 5
    bnez    $t1, 1b
    nop
    mtc0    $zero, $12

    # Stage 6: user code reading the kernel window gets an address error.
    addiu   $a0, $zero, 6
    lui     $t0, 0x4008
    addiu   $t1, $zero, 1
    sw      $t1, 8($t0)
    lui     $t0, 0x0040
    ori     $t0, $t0, 0x100
    dmtc0   $t0, $14
    addiu   $t0, $zero, 0x12
    mtc0    $t0, $12
    eret
vtg_after_address_error:

    # Stage 7: 8 pages at GPA 0x60_0000 get a pattern and are read (root entries exist);
    # the yield asks the host to swap them out (flush tokens); 8 fresh pages at GPA 0x70_0000
    # then take the freed host frames; the first 8 must still read their own pattern.
    addiu   $a0, $zero, 7
    lui     $t0, 0x4060
    lui     $t1, 0x4060
    ori     $t1, $t1, 0x8000
1:  xori    $t2, $t0, 0x7777
    sd      $t2, 0($t0)
    ld      $t3, 0($t0)
    bne     $t2, $t3, vtg_exit
    daddiu  $t0, $t0, 0x1000
    bne     $t0, $t1, 1b
    nop
    addiu   $v0, $zero, 4
    .word   0x42000028              # HYPCALL yield: the host swaps GPA 0x60_0000.. out
    lui     $t0, 0x4070
    lui     $t1, 0x4070
    ori     $t1, $t1, 0x8000
2:  sd      $t0, 0($t0)
    daddiu  $t0, $t0, 0x1000
    bne     $t0, $t1, 2b
    nop
    lui     $t0, 0x4060
    lui     $t1, 0x4060
    ori     $t1, $t1, 0x8000
3:  ld      $t2, 0($t0)
    xori    $t2, $t2, 0x7777
    bne     $t2, $t0, vtg_exit
    daddiu  $t0, $t0, 0x1000
    bne     $t0, $t1, 3b
    nop

    # Stage 8: devices. The 16550 at GPA 0x1f00_0000 prints a line and reports THR empty;
    # the virtio-mmio window at 0x1f00_1000 shows magic, version 2 and the balloon's ID;
    # the read-only slot at 0x1e00_0000 ignores a store.
    addiu   $a0, $zero, 8
    lui     $t0, 0x5f00
    addiu   $t1, $zero, 0x75        # "uart ok\n"
    sb      $t1, 0($t0)
    addiu   $t1, $zero, 0x61
    sb      $t1, 0($t0)
    addiu   $t1, $zero, 0x72
    sb      $t1, 0($t0)
    addiu   $t1, $zero, 0x74
    sb      $t1, 0($t0)
    addiu   $t1, $zero, 0x20
    sb      $t1, 0($t0)
    addiu   $t1, $zero, 0x6f
    sb      $t1, 0($t0)
    addiu   $t1, $zero, 0x6b
    sb      $t1, 0($t0)
    addiu   $t1, $zero, 0x0a
    sb      $t1, 0($t0)
    lbu     $t1, 5($t0)             # LSR
    andi    $t1, $t1, 0x20          # THRE
    beqz    $t1, vtg_exit
    nop
    ori     $t0, $t0, 0x1000
    lw      $t1, 0($t0)             # MagicValue
    lui     $t2, 0x7472
    ori     $t2, $t2, 0x6976
    bne     $t1, $t2, vtg_exit
    nop
    lw      $t1, 4($t0)             # Version
    addiu   $t2, $zero, 2
    bne     $t1, $t2, vtg_exit
    nop
    lw      $t1, 8($t0)             # DeviceID
    addiu   $t2, $zero, 5
    bne     $t1, $t2, vtg_exit
    nop
    lui     $t0, 0x5e00
    addiu   $t1, $zero, 0x77
    sw      $t1, 0($t0)
    lw      $t1, 0($t0)
    bnez    $t1, vtg_exit
    nop

    # Done: print the message and exit 0.
    addiu   $v0, $zero, 1
    lui     $a0, 0x4000
    ori     $a0, $a0, 0x4f00
    addiu   $a1, $zero, 76              # message length
    .word   0x42000028              # HYPCALL console write
    b       vtg_exit
    move    $a0, $zero

    .org 0x3f00
vtg_message:
    .ascii  "vcpu test guest: window, mapped kernel, refills, user mode, timer, swap: ok\n"
vtg_message_end:
    .set pop
    .globl vcpu_test_guest_end
vcpu_test_guest_end:
