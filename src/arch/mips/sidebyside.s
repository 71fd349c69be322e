# The side-by-side benchmark (assembled through global_asm! in sidebyside.rs): one set of
# workloads run once bare-metal by the firmware in kernel mode (no hypervisor in the path)
# and once as a mipsvisor guest, the same bytes both times.
#
# `sbs_driver` runs every workload in turn and calls a mark routine (its address in a2)
# before the first and after each one. It and the workloads use PC-relative branches only
# and get every address in registers, so the bytes run unchanged at the firmware's KSEG0
# address and in the guest's unmapped window:
#   bare:  base = xkphys view of a firmware-owned block, mark = sbs_bare_mark (stores Count)
#   guest: base = 0x4000_0000 (GPA 0), mark = YIELD hypercall (the host notes its Count)
# Layout from base (bare: the block, guest: guest RAM; offsets in sidebyside.rs): the page
# table (an 8 KiB directory of 1024 pointers, then the PTE tables), the 32 MiB read region
# (whose first 16 MiB the TLB workload maps), the first-touch region, and the 256 MiB read
# region from base itself (all guest RAM).
# Marks, in order: M0; compute M1; 32 MiB touching pass M2; 32 MiB passes M3; first touch
# M4; 256 MiB touching pass M5; 256 MiB passes M6; page table + warm pass M7; TLB-missing
# loads M8; the same loads on one page (baseline) M9.
#
# The guest-TLB refill handler (SBS_REFILL) is Linux-like: a two-level page table whose
# directory base sits in Context.PTEBase, so it reads 3 CP0 registers (Context, BadVAddr,
# Context), writes 2 (EntryLo0/1), then TLBWR and ERET: the 7 instructions that trap when
# a guest runs it, as in the handler Linux generates. 18 instructions in all.

    .macro SBS_REFILL
    .set push
    .set noreorder
    .set noat
    dmfc0   $k1, $4                 # Context: PTEBase = directory (8 MiB aligned)
    dmfc0   $k0, $8                 # BadVAddr
    dsrl    $k1, $k1, 23
    dsll    $k1, $k1, 23            # the directory
    dsrl    $k0, $k0, 19
    andi    $k0, $k0, 0x1ff8        # VA[31:22] * 8: directory slot
    daddu   $k1, $k1, $k0
    ld      $k1, 0($k1)             # the PTE table of this 4 MiB
    dmfc0   $k0, $4                 # Context: BadVPN2 (22:4) = VA[31:13]
    andi    $k0, $k0, 0x1ff0        # VA[21:13] * 16: the pair in its table
    daddu   $k1, $k1, $k0
    ld      $k0, 0($k1)
    ld      $k1, 8($k1)
    dmtc0   $k0, $2                 # EntryLo0
    dmtc0   $k1, $3                 # EntryLo1
    ehb                             # EntryLo writes settle before TLBWR
    tlbwr
    eret
    .set pop
    .endm

# ---- The guest image: copied into guest RAM at GPA 0x1000, entered at its start. --------
    .section .text.sbs_guest, "ax"
    .balign 4096
    .globl sbs_guest_start
sbs_guest_start:
    .set push
    .set noreorder
    .set noat
    b       sbs_guest_entry
    nop

    .org 0x1000                     # the guest's EBase (GPA 0x2000)
    .globl sbs_guest_vectors
sbs_guest_vectors:
    SBS_REFILL
    .org 0x1180
sbs_guest_general:                  # nothing else is expected: exit 100 + ExcCode
    mfc0    $k0, $13
    andi    $k0, $k0, 0x7c
    srl     $k0, $k0, 2
    b       sbs_guest_exit
    addiu   $a0, $k0, 100

sbs_guest_exit:
    addiu   $v0, $zero, 2
    .word   0x42000028              # HYPCALL exit
1:  b       1b
    nop

sbs_guest_mark:                     # YIELD: the host notes its Count (clobbers v0)
    addiu   $v0, $zero, 4
    .word   0x42000028
    jr      $ra
    nop

sbs_guest_entry:
    lui     $t0, 0x4000
    ori     $t0, $t0, 0x2000
    mtc0    $t0, $15, 1             # EBase
    mtc0    $zero, $12              # kernel mode, interrupts off, BEV and ERL clear
    mtc0    $zero, $5               # PageMask: 4 KiB pages
    dmtc0   $zero, $10              # EntryHi: ASID 0
    lui     $a0, 0x4000             # base: GPA 0 in the window
    move    $a1, $zero
    bal     sbs_guest_here
    nop
sbs_guest_here:
    daddiu  $a2, $ra, sbs_guest_mark - sbs_guest_here
    bal     sbs_driver
    nop
    b       sbs_guest_exit
    move    $a0, $zero

# ---- Shared code: the same bytes run bare and in the guest. -----------------------------
# sbs_driver(a0 = base address, a1 = base physical address, a2 = mark routine). Keeps them
# in s0-s2 and its return address in s3; the mark routine may clobber v0 and k0 only.
    .globl sbs_driver
sbs_driver:
    move    $s3, $ra
    move    $s0, $a0
    move    $s1, $a1
    move    $s2, $a2
    jalr    $s2                     # M0
    nop

    li      $a0, {compute_iterations}
    bal     sbs_compute
    nop
    jalr    $s2                     # M1: compute
    nop

    li      $t0, {read32_off}
    daddu   $a0, $s0, $t0
    li      $a1, {read32_bytes}
    bal     sbs_read
    addiu   $a2, $zero, 1
    jalr    $s2                     # M2: 32 MiB touching pass
    nop
    li      $t0, {read32_off}
    daddu   $a0, $s0, $t0
    li      $a1, {read32_bytes}
    bal     sbs_read
    addiu   $a2, $zero, {read32_passes}
    jalr    $s2                     # M3: 32 MiB passes
    nop

    li      $t0, {touch_off}
    daddu   $a0, $s0, $t0
    li      $a1, {touch_bytes}
    bal     sbs_fill
    nop
    jalr    $s2                     # M4: first touch
    nop

    move    $a0, $s0
    li      $a1, {read256_bytes}
    bal     sbs_read
    addiu   $a2, $zero, 1
    jalr    $s2                     # M5: 256 MiB touching pass
    nop
    move    $a0, $s0
    li      $a1, {read256_bytes}
    bal     sbs_read
    addiu   $a2, $zero, {read256_passes}
    jalr    $s2                     # M6: 256 MiB passes
    nop

    li      $t0, {pt_off}
    daddu   $a0, $s0, $t0
    dmtc0   $a0, $4                 # Context.PTEBase = the directory
    li      $t0, {read32_off}
    daddu   $a1, $s1, $t0           # mapped pages: physical base + the 32 MiB region
    bal     sbs_pt_build
    addiu   $a2, $zero, {tlb_pairs}
    move    $a0, $zero
    addiu   $a1, $zero, {tlb_pairs}
    addiu   $a2, $zero, 0x2000
    addiu   $a4, $zero, 16
    bal     sbs_tlb_loads
    addiu   $a3, $zero, 1
    jalr    $s2                     # M7: page table and warm pass
    nop
    move    $a0, $zero
    addiu   $a1, $zero, {tlb_pairs}
    addiu   $a2, $zero, 0x2000      # one load per page pair: each misses the TLB
    addiu   $a4, $zero, 32
    bal     sbs_tlb_loads
    addiu   $a3, $zero, {tlb_passes}
    jalr    $s2                     # M8: TLB-missing loads
    nop
    move    $a0, $zero
    addiu   $a1, $zero, {tlb_pairs}
    move    $a2, $zero              # baseline: the same instructions on one page
    addiu   $a4, $zero, 48
    bal     sbs_tlb_loads
    addiu   $a3, $zero, {tlb_passes}
    jalr    $s2                     # M9: baseline
    nop
    jr      $s3
    nop

# sbs_compute(a0 = iterations): xorshift64 in registers, 9 instructions per iteration.
sbs_compute:
    addiu   $v0, $zero, 0x1234
1:  dsll    $t0, $v0, 13
    xor     $v0, $v0, $t0
    dsrl    $t0, $v0, 7
    xor     $v0, $v0, $t0
    dsll    $t0, $v0, 17
    xor     $v0, $v0, $t0
    addiu   $a0, $a0, -1
    bnez    $a0, 1b
    nop
    jr      $ra
    nop

# sbs_read(a0 = base, a1 = bytes, a multiple of 64, a2 = passes): sums every 64-bit word,
# 19 instructions per 64 bytes.
sbs_read:
    move    $v0, $zero
1:  move    $t8, $a0
    daddu   $t9, $a0, $a1
2:  ld      $a4, 0($t8)
    ld      $a5, 8($t8)
    ld      $a6, 16($t8)
    ld      $a7, 24($t8)
    ld      $t0, 32($t8)
    ld      $t1, 40($t8)
    ld      $t2, 48($t8)
    ld      $t3, 56($t8)
    daddu   $v0, $v0, $a4
    daddu   $v0, $v0, $a5
    daddu   $v0, $v0, $a6
    daddu   $v0, $v0, $a7
    daddu   $v0, $v0, $t0
    daddu   $v0, $v0, $t1
    daddu   $v0, $v0, $t2
    daddu   $v0, $v0, $t3
    daddiu  $t8, $t8, 64
    bne     $t8, $t9, 2b
    nop
    addiu   $a2, $a2, -1
    bnez    $a2, 1b
    nop
    jr      $ra
    nop

# sbs_fill(a0 = base, a1 = bytes, a multiple of 64): zeroes every word, as a kernel clears
# a fresh page; 11 instructions per 64 bytes.
sbs_fill:
    daddu   $t9, $a0, $a1
1:  sd      $zero, 0($a0)
    sd      $zero, 8($a0)
    sd      $zero, 16($a0)
    sd      $zero, 24($a0)
    sd      $zero, 32($a0)
    sd      $zero, 40($a0)
    sd      $zero, 48($a0)
    sd      $zero, 56($a0)
    daddiu  $a0, $a0, 64
    bne     $a0, $t9, 1b
    nop
    jr      $ra
    nop

# sbs_pt_build(a0 = directory address, a1 = physical address of the first mapped page,
# a2 = page pairs, a multiple of 512): virtual pair i (VA i * 8 KiB) maps the two pages from
# a1 + i * 8 KiB, cacheable, valid, read-only, not global. The PTE tables follow the
# directory (8 KiB each: 512 pairs of two 64-bit EntryLo values).
sbs_pt_build:
    daddiu  $t0, $a0, 0x2000        # PTE table of directory slot 0
    move    $t1, $a0
    srl     $t2, $a2, 9
1:  sd      $t0, 0($t1)
    daddiu  $t1, $t1, 8
    addiu   $t2, $t2, -1
    bnez    $t2, 1b
    daddiu  $t0, $t0, 0x2000
    daddiu  $t0, $a0, 0x2000        # the PTE pairs, one after the other
    dsrl    $t1, $a1, 12            # PFN of the first page
    move    $t2, $a2
2:  dsll    $t3, $t1, 6
    ori     $t3, $t3, 0x1a          # C = 3 (cacheable), V
    sd      $t3, 0($t0)
    daddiu  $t3, $t3, 0x40          # next PFN
    sd      $t3, 8($t0)
    daddiu  $t1, $t1, 2
    daddiu  $t0, $t0, 16
    addiu   $t2, $t2, -1
    bnez    $t2, 2b
    nop
    jr      $ra
    nop

# sbs_tlb_loads(a0 = first address, a1 = loads per pass, a2 = stride, a3 = passes, a4 =
# ASID base): 5 instructions per load. Each pass runs with its own ASID (a4 + passes left),
# as a process switch would, so no entry written in another pass can hit. (QEMU also keeps
# up to 64 replaced entries as hidden extra entries until a TLBWI, TLBP or TLBR; without
# the ASID change those would hit on bare metal.)
sbs_tlb_loads:
1:  daddu   $t0, $a4, $a3
    dmtc0   $t0, $10                # EntryHi: VPN2 0, this pass's ASID
    ehb
    move    $t8, $a0
    move    $t9, $a1
2:  ld      $a5, 0($t8)
    daddu   $t8, $t8, $a2
    addiu   $t9, $t9, -1
    bnez    $t9, 2b
    nop
    addiu   $a3, $a3, -1
    bnez    $a3, 1b
    nop
    jr      $ra
    nop
    .set pop
    .globl sbs_guest_end
sbs_guest_end:

# ---- Bare metal: the vectors and the entry the firmware calls. ---------------------------
# EBase may only change while Status.BEV is set (PRA); interrupts are off throughout.
    .macro SBS_SET_EBASE reg
    mfc0    $t1, $12
    lui     $t2, 0x40               # Status.BEV
    or      $t2, $t1, $t2
    mtc0    $t2, $12
    ehb
    mtc0    \reg, $15, 1
    mtc0    $t1, $12
    ehb
    .endm

    .section .text.sbs_bare, "ax"
    .balign 4096
    .globl sbs_bare_vectors
sbs_bare_vectors:
    SBS_REFILL                      # TLB refill (Status.UX = 0)
    .org 0x080
    SBS_REFILL                      # XTLB refill (the firmware runs with Status.UX set)
    .org 0x180
    .set push
    .set noreorder
    j       exception_vectors + 0x180   # anything else: the firmware's own report
    nop
    .org 0x200
    j       exception_vectors + 0x200
    nop
    .set pop

# sbs_bare_mark: stores Count at s4 and advances s4 (clobbers k0).
sbs_bare_mark:
    .set push
    .set noreorder
    mfc0    $k0, $9
    sw      $k0, 0($s4)
    jr      $ra
    daddiu  $s4, $s4, 4
    .set pop

# sbs_bare_enter(a0 = base address, a1 = base physical address, a2 = 10 words for the
# Count at each mark). The caller has interrupts off. Saves EBase, Context, PageMask and
# EntryHi, points EBase at sbs_bare_vectors, runs sbs_driver, restores them. The TLB
# entries the run wrote are the caller's to drop.
    .globl sbs_bare_enter
sbs_bare_enter:
    .set push
    .set noreorder
    .set noat
    daddiu  $sp, $sp, -96
    sd      $s0, 0($sp)
    sd      $s1, 8($sp)
    sd      $s2, 16($sp)
    sd      $s3, 24($sp)
    sd      $s4, 32($sp)
    sd      $ra, 40($sp)
    mfc0    $t0, $15, 1
    sd      $t0, 48($sp)            # EBase
    dmfc0   $t0, $4
    sd      $t0, 56($sp)            # Context
    mfc0    $t0, $5
    sd      $t0, 64($sp)            # PageMask
    dmfc0   $t0, $10
    sd      $t0, 72($sp)            # EntryHi
    dla     $t0, sbs_bare_vectors
    SBS_SET_EBASE $t0
    mtc0    $zero, $5
    ehb
    move    $s4, $a2
    dla     $a2, sbs_bare_mark
    jal     sbs_driver
    nop
    ld      $t0, 48($sp)
    SBS_SET_EBASE $t0
    ld      $t0, 56($sp)
    dmtc0   $t0, $4
    ld      $t0, 64($sp)
    mtc0    $t0, $5
    ld      $t0, 72($sp)
    dmtc0   $t0, $10
    ehb
    ld      $s0, 0($sp)
    ld      $s1, 8($sp)
    ld      $s2, 16($sp)
    ld      $s3, 24($sp)
    ld      $s4, 32($sp)
    ld      $ra, 40($sp)
    jr      $ra
    daddiu  $sp, $sp, 96
    .set pop
