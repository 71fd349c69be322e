# EJTAG debug exception stub, built into the image for the debug vector 0xbfc00480 (the
# boot ROM; qemu-run.sh loads these bytes there with QEMU's generic loader).
#
# A guest runs in host user mode, and SDBBP does not trap to EBase + 0x180 like other
# instructions: the CPU enters debug mode at 0xbfc00480 with DEPC = the SDBBP (or its branch
# when in a delay slot). This stub turns that into an ordinary exception entry: it sets
# Status.EXL, copies DEPC to EPC and leaves debug mode (DERET) for EBase + {debug_offset},
# the firmware's debug-exit vector, with every GPR as the guest had it. DESAVE, the EJTAG
# scratch register, holds k0 while the stub works; nothing else in the firmware keeps a
# value in DESAVE across code that can execute SDBBP.
#
# Position independent (it runs from the boot ROM, not where the image is linked) and at
# most 128 bytes (the room up to the boot loader's data at 0xbfc00500).

    .section .ejtag_vector, "ax"
    .set push
    .set noreorder
    .set noat
    .globl ejtag_vector_start
ejtag_vector_start:
    dmtc0   $k0, $31                # DESAVE: k0, for the return
    mfc0    $k0, $12
    ori     $k0, $k0, 0x2           # Status.EXL: DERET lands in kernel mode, interrupts off
    mtc0    $k0, $12
    dmfc0   $k0, $24                # DEPC: the SDBBP, or the branch whose slot holds it
    dmtc0   $k0, $14                # -> EPC, as an exception would have left it
    mfc0    $k0, $15, 1             # EBase (sign-extended KSEG0 address | CPUNum)
    srl     $k0, $k0, 12
    sll     $k0, $k0, 12            # the vector base, sign-extended again
    daddiu  $k0, $k0, {debug_offset}
    dmtc0   $k0, $24                # DERET goes to the debug-exit vector
    dmfc0   $k0, $31                # k0 back
    ehb
    deret
    nop                             # (no delay slot on R2; harmless on cores with one)
    .globl ejtag_vector_end
ejtag_vector_end:
    .set pop
