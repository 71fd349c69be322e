//! MIPS Malta board (as QEMU models it): memory map and console.
//!
//! Physical map: RAM at 0 up to the 256 MiB I/O hole (0x1000_0000..0x2000_0000: GT-64120
//! system controller, PCI, the PIIX4 SuperIO with the UART at 0x1800_03f8, boot flash at
//! 0x1fc0_0000). QEMU maps *all* RAM a second time at 0x8000_0000 (hw/mips/malta.c
//! registers the whole RAM region there and aliases its first 256 MiB at 0), so RAM
//! above 256 MiB is the range 0x9000_0000..0x8000_0000 + ram_size, reachable only through
//! xkphys. The boot loader reports `memsize` (RAM below the hole) and `ememsize` (all RAM)
//! in its environment.

use hv_core::addr::Hpa;

/// Human-readable board name.
pub const NAME: &str = "MIPS Malta (QEMU)";

/// Physical address of the first 16550 UART (PIIX4 SuperIO COM1, the `-serial` console).
pub const UART0: Hpa = Hpa::new(0x1800_03f8);
/// Distance between UART registers in bytes.
pub const UART_STRIDE: usize = 1;

/// CPU clock a guest's device tree names: QEMU's Malta CPU ticks Count at 100 MHz (of
/// virtual time), guests read the host's Count rate, and Linux takes Count as half the CPU
/// clock.
pub const GUEST_CPU_CLOCK_HZ: u32 = 200_000_000;

/// RAM visible below the I/O hole at most.
pub const LOW_RAM_LIMIT_BYTES: u64 = 256 << 20;
/// Where the whole of RAM appears a second time (offset 0 of RAM).
pub const RAM_FULL_ALIAS: Hpa = Hpa::new(0x8000_0000);
/// Most RAM the board (and QEMU's model) supports.
pub const MAX_RAM_BYTES: u64 = 2 << 30;

/// RAM as two physical ranges: below the hole, and the part above 256 MiB via the alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamLayout {
    /// `[0, min(ram, 256 MiB))`.
    pub low: (Hpa, Hpa),
    /// `[0x8000_0000 + 256 MiB, 0x8000_0000 + ram)` when there is more than 256 MiB.
    pub high: Option<(Hpa, Hpa)>,
    /// Total RAM in bytes.
    pub total_bytes: u64,
}

/// Builds the layout from the total RAM size (clamped to what the board can hold).
pub fn ram_layout(total_bytes: u64) -> RamLayout {
    let total_bytes = total_bytes.min(MAX_RAM_BYTES);
    let low_end = total_bytes.min(LOW_RAM_LIMIT_BYTES);
    let high = (total_bytes > LOW_RAM_LIMIT_BYTES).then(|| {
        (
            Hpa::new(RAM_FULL_ALIAS.raw() + LOW_RAM_LIMIT_BYTES),
            Hpa::new(RAM_FULL_ALIAS.raw() + total_bytes),
        )
    });
    RamLayout {
        low: (Hpa::new(0), Hpa::new(low_end)),
        high,
        total_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_ram_is_all_below_the_hole() {
        let layout = ram_layout(128 * MIB);
        assert_eq!(layout.low, (Hpa::new(0), Hpa::new(128 * MIB)));
        assert_eq!(layout.high, None);
        assert_eq!(layout.total_bytes, 128 * MIB);
        assert_eq!(ram_layout(256 * MIB).high, None);
    }

    #[test]
    fn ram_above_256_mib_lives_behind_the_2_gib_alias() {
        let layout = ram_layout(1024 * MIB);
        assert_eq!(layout.low, (Hpa::new(0), Hpa::new(256 * MIB)));
        assert_eq!(
            layout.high,
            Some((Hpa::new(0x9000_0000), Hpa::new(0xc000_0000)))
        );
        assert_eq!(layout.total_bytes, 1024 * MIB);
    }

    #[test]
    fn ram_is_clamped_to_what_the_board_holds() {
        let layout = ram_layout(4096 * MIB);
        assert_eq!(layout.total_bytes, MAX_RAM_BYTES);
        assert_eq!(
            layout.high.map(|(_, end)| end),
            Some(Hpa::new(0x1_0000_0000))
        );
    }
}
