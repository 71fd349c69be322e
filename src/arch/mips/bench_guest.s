# The benchmark guest (a flat image, assembled through global_asm! in bench_guest.rs and
# copied into guest RAM at GPA 0x1000; the host never runs it).
#
# Five phases, each an event loop and a baseline loop of exactly the same instructions
# where only the event differs (an address that misses versus one that hits, a trapping
# instruction versus a NOP). A YIELD hypercall before the first phase and after every loop
# lets the host take a timestamp and counter snapshot; the difference of the two loops is the
# cost of the events alone.
#   1  root-TLB refill: loads cycling over 512 window pages already in the GPA table (and,
#      after a warm-up pass, in the host's refill cache)
#   2  fast fault: the same pages through a guest TLB entry (1 MiB pages at 0x6000_0000),
#      4 passes, each after a guest ASID change so every pair is built again
#   3  first touch: stores to 1024 never-touched pages (GPA 0x40_0000..0x80_0000)
#   4  MTC0 EntryLo0, emulated
#   5  HYPCALL VM info (key 0)
# Exit status 0, or 100 + ExcCode for an unexpected exception.

    .section .rodata.bench_guest, "a"
    .balign 4096
    .globl bench_guest_start
bench_guest_start:
    .set push
    .set noreorder
    .set noat
    b       bg_main
    nop

    .org 0x1000
bg_refill:                          # EBase + 0: no guest refill is expected
    b       bg_exit
    addiu   $a0, $zero, 99
    .org 0x1180
bg_general:
    mfc0    $k0, $13
    andi    $k0, $k0, 0x7c
    srl     $k0, $k0, 2
    b       bg_exit
    addiu   $a0, $k0, 100

bg_exit:
    addiu   $v0, $zero, 2
    .word   0x42000028              # HYPCALL exit
1:  b       1b
    nop

bg_mark:                            # YIELD: the host takes a snapshot
    addiu   $v0, $zero, 4
    .word   0x42000028
    jr      $ra
    nop

    .org 0x2000
bg_main:
    lui     $sp, 0x4010
    lui     $t0, 0x4000
    ori     $t0, $t0, 0x2000
    mtc0    $t0, $15, 1             # EBase
    mtc0    $zero, $12              # kernel mode, interrupts off
    # Pre-touch the 512 pages of phases 1 and 2 (GPA 0x20_0000..0x40_0000).
    lui     $t0, 0x4020
    lui     $t1, 0x4040
1:  sd      $zero, 0($t0)
    daddiu  $t0, $t0, 0x1000
    bne     $t0, $t1, 1b
    nop
    # Guest TLB entry 0: 0x6000_0000 -> GPA 0x20_0000 / 0x30_0000, 1 MiB pages, global.
    # (Phase 3 starts at GPA 0x40_0000, above both.)
    lui     $t0, 0x1f
    ori     $t0, $t0, 0xe000
    mtc0    $t0, $5                 # PageMask 1 MiB
    lui     $t0, 0x6000
    dmtc0   $t0, $10
    addiu   $t0, $zero, 0x200
    dsll    $t0, $t0, 6
    ori     $t0, $t0, 0x1f
    dmtc0   $t0, $2
    addiu   $t0, $zero, 0x300
    dsll    $t0, $t0, 6
    ori     $t0, $t0, 0x1f
    dmtc0   $t0, $3
    mtc0    $zero, $0
    tlbwi
    mtc0    $zero, $5
    lui     $s1, 0x1f
    ori     $s1, $s1, 0xf000        # offset mask: 512 pages
    # Warm-up: every window page of phase 1 in the GPA table and the host's refill cache.
    lui     $t3, 0x4020
    addiu   $s2, $zero, 0x1000
    addiu   $a1, $zero, 1024
    bal     bg_page_loop
    nop
    bal     bg_mark
    nop

    # Phase 1: refills over the window. Event: the offset advances a page each time.
    lui     $t3, 0x4020
    addiu   $s2, $zero, 0x1000
    addiu   $a1, $zero, 4096
    bal     bg_page_loop
    nop
    bal     bg_mark
    nop
    move    $s2, $zero              # baseline: always the same page
    addiu   $a1, $zero, 4096
    bal     bg_page_loop
    nop
    bal     bg_mark
    nop

    # Phase 2: the same pages through the guest TLB, 8 passes of 256 pages, each after a
    # guest ASID change (which gives the vCPU fresh host ASIDs: nothing cached survives),
    # so every pair is built again from the guest TLB and the GPA table.
    lui     $t3, 0x6000
    addiu   $s2, $zero, 0x1000
    bal     bg_asid_passes
    nop
    bal     bg_mark
    nop
    move    $s2, $zero
    bal     bg_asid_passes
    nop
    bal     bg_mark
    nop

    # Phase 3: first touch of 1024 pages from GPA 0x40_0000.
    lui     $t3, 0x4040
    addiu   $s2, $zero, 0x1000
    addiu   $s0, $zero, 1024
1:  sd      $zero, 0($t3)
    addiu   $s0, $s0, -1
    bnez    $s0, 1b
    daddu   $t3, $t3, $s2
    bal     bg_mark
    nop
    lui     $t3, 0x4040
    move    $s2, $zero
    addiu   $s0, $zero, 1024
1:  sd      $zero, 0($t3)
    addiu   $s0, $s0, -1
    bnez    $s0, 1b
    daddu   $t3, $t3, $s2
    bal     bg_mark
    nop

    # Phase 4: MTC0 EntryLo0 versus a NOP.
    addiu   $s0, $zero, 2048
1:  mtc0    $zero, $2
    addiu   $s0, $s0, -1
    bnez    $s0, 1b
    nop
    bal     bg_mark
    nop
    addiu   $s0, $zero, 2048
1:  sll     $zero, $zero, 0
    addiu   $s0, $s0, -1
    bnez    $s0, 1b
    nop
    bal     bg_mark
    nop

    # Phase 5: HYPCALL VM info (key 0) versus a NOP.
    addiu   $s0, $zero, 2048
1:  addiu   $v0, $zero, 3
    move    $a0, $zero
    .word   0x42000028
    addiu   $s0, $s0, -1
    bnez    $s0, 1b
    nop
    bal     bg_mark
    nop
    addiu   $s0, $zero, 2048
1:  addiu   $v0, $zero, 3
    move    $a0, $zero
    sll     $zero, $zero, 0
    addiu   $s0, $s0, -1
    bnez    $s0, 1b
    nop
    bal     bg_mark
    nop

    b       bg_exit
    move    $a0, $zero

# 4 times: change the guest ASID (1 <-> 2), then 512 loads of bg_page_loop.
bg_asid_passes:
    move    $s5, $ra
    addiu   $s3, $zero, 4
    addiu   $s4, $zero, 1
1:  xori    $s4, $s4, 3
    dmtc0   $s4, $10
    bal     bg_page_loop
    addiu   $a1, $zero, 512
    addiu   $s3, $s3, -1
    bnez    $s3, 1b
    nop
    jr      $s5
    nop

# a1 loads from t3 + offset, the offset stepping by s2 within 512 pages (mask in s1).
bg_page_loop:
    move    $s0, $a1
    move    $t2, $zero
1:  daddu   $t0, $t3, $t2
    ld      $t1, 0($t0)
    daddu   $t2, $t2, $s2
    and     $t2, $t2, $s1
    addiu   $s0, $s0, -1
    bnez    $s0, 1b
    nop
    jr      $ra
    nop
    .set pop
    .globl bench_guest_end
bench_guest_end:
