//! The guest's Coprocessor 0: a register file indexed by (register, select) with a
//! writable-bits mask per register.
//!
//! A guest MTC0/DMTC0 changes only the bits in the register's mask:
//! `new = (old & !mask) | (value & mask)`. Fields the architecture makes read-only
//! (Cause.ExcCode, BadVAddr, Random, PRId, the Config registers, EBase.CPUNum, ...) are
//! written only by the hypervisor itself through [`Cp0::set_raw`], e.g. during exception
//! delivery. Writes that matter to the host (a new ASID, a timer acknowledge, a Count
//! rebase, a new Status) come back as a [`Cp0Effect`] value for the caller to act on; this
//! module never touches real hardware.
//!
//! Register numbers, field positions and reset values follow the MIPS64 Architecture,
//! Volume III (Privileged Resource Architecture), Release 2, chapter "Coprocessor 0
//! Registers". Registers not listed in [`Cp0::spec`] are not implemented: they read as zero
//! and ignore writes.

use bitflags::bitflags;

use crate::regs::sign_extend32;

/// A CP0 register address: register number 0..32 and select 0..8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cp0Reg {
    reg: u8,
    sel: u8,
}

impl Cp0Reg {
    /// Index (0, 0).
    pub const INDEX: Cp0Reg = Cp0Reg::new(0, 0);
    /// Random (1, 0).
    pub const RANDOM: Cp0Reg = Cp0Reg::new(1, 0);
    /// EntryLo0 (2, 0).
    pub const ENTRY_LO0: Cp0Reg = Cp0Reg::new(2, 0);
    /// EntryLo1 (3, 0).
    pub const ENTRY_LO1: Cp0Reg = Cp0Reg::new(3, 0);
    /// Context (4, 0).
    pub const CONTEXT: Cp0Reg = Cp0Reg::new(4, 0);
    /// UserLocal (4, 2).
    pub const USER_LOCAL: Cp0Reg = Cp0Reg::new(4, 2);
    /// PageMask (5, 0).
    pub const PAGE_MASK: Cp0Reg = Cp0Reg::new(5, 0);
    /// Wired (6, 0).
    pub const WIRED: Cp0Reg = Cp0Reg::new(6, 0);
    /// HWREna (7, 0).
    pub const HWRENA: Cp0Reg = Cp0Reg::new(7, 0);
    /// BadVAddr (8, 0).
    pub const BAD_VADDR: Cp0Reg = Cp0Reg::new(8, 0);
    /// Count (9, 0).
    pub const COUNT: Cp0Reg = Cp0Reg::new(9, 0);
    /// EntryHi (10, 0).
    pub const ENTRY_HI: Cp0Reg = Cp0Reg::new(10, 0);
    /// Compare (11, 0).
    pub const COMPARE: Cp0Reg = Cp0Reg::new(11, 0);
    /// Status (12, 0).
    pub const STATUS: Cp0Reg = Cp0Reg::new(12, 0);
    /// IntCtl (12, 1).
    pub const INTCTL: Cp0Reg = Cp0Reg::new(12, 1);
    /// SRSCtl (12, 2).
    pub const SRSCTL: Cp0Reg = Cp0Reg::new(12, 2);
    /// SRSMap (12, 3).
    pub const SRSMAP: Cp0Reg = Cp0Reg::new(12, 3);
    /// Cause (13, 0).
    pub const CAUSE: Cp0Reg = Cp0Reg::new(13, 0);
    /// EPC (14, 0).
    pub const EPC: Cp0Reg = Cp0Reg::new(14, 0);
    /// PRId (15, 0).
    pub const PRID: Cp0Reg = Cp0Reg::new(15, 0);
    /// EBase (15, 1).
    pub const EBASE: Cp0Reg = Cp0Reg::new(15, 1);
    /// Config (16, 0).
    pub const CONFIG0: Cp0Reg = Cp0Reg::new(16, 0);
    /// Config1 (16, 1).
    pub const CONFIG1: Cp0Reg = Cp0Reg::new(16, 1);
    /// Config2 (16, 2).
    pub const CONFIG2: Cp0Reg = Cp0Reg::new(16, 2);
    /// Config3 (16, 3).
    pub const CONFIG3: Cp0Reg = Cp0Reg::new(16, 3);
    /// Config4 (16, 4).
    pub const CONFIG4: Cp0Reg = Cp0Reg::new(16, 4);
    /// Config5 (16, 5).
    pub const CONFIG5: Cp0Reg = Cp0Reg::new(16, 5);
    /// LLAddr (17, 0).
    pub const LLADDR: Cp0Reg = Cp0Reg::new(17, 0);
    /// XContext (20, 0).
    pub const XCONTEXT: Cp0Reg = Cp0Reg::new(20, 0);
    /// TagLo (28, 0).
    pub const TAG_LO: Cp0Reg = Cp0Reg::new(28, 0);
    /// DataLo (28, 1).
    pub const DATA_LO: Cp0Reg = Cp0Reg::new(28, 1);
    /// TagHi (29, 0).
    pub const TAG_HI: Cp0Reg = Cp0Reg::new(29, 0);
    /// DataHi (29, 1).
    pub const DATA_HI: Cp0Reg = Cp0Reg::new(29, 1);
    /// ErrorEPC (30, 0).
    pub const ERROR_EPC: Cp0Reg = Cp0Reg::new(30, 0);
    /// KScratch1 (31, 2).
    pub const KSCRATCH1: Cp0Reg = Cp0Reg::new(31, 2);
    /// KScratch2 (31, 3).
    pub const KSCRATCH2: Cp0Reg = Cp0Reg::new(31, 3);

    /// The register at (`reg` & 31, `sel` & 7).
    pub const fn new(reg: u8, sel: u8) -> Self {
        Cp0Reg {
            reg: reg & 0x1f,
            sel: sel & 0x7,
        }
    }

    /// Register number.
    pub const fn reg(self) -> u8 {
        self.reg
    }

    /// Select.
    pub const fn sel(self) -> u8 {
        self.sel
    }

    /// Dense index `reg * 8 + sel`, in `0..256`.
    pub const fn index(self) -> usize {
        (self.reg as usize) << 3 | self.sel as usize
    }

    /// Every register address, in index order.
    pub fn all() -> impl Iterator<Item = Cp0Reg> {
        (0u8..32).flat_map(|reg| (0u8..8).map(move |sel| Cp0Reg::new(reg, sel)))
    }
}

bitflags! {
    /// Status register bits (Volume III, "Status Register").
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Status: u32 {
        /// Interrupt enable.
        const IE = 1 << 0;
        /// Exception level.
        const EXL = 1 << 1;
        /// Error level.
        const ERL = 1 << 2;
        /// Supervisor bit of KSU (not implemented for guests: always 0).
        const SUPERVISOR = 1 << 3;
        /// User-mode bit of KSU.
        const UM = 1 << 4;
        /// 64-bit user segment enable.
        const UX = 1 << 5;
        /// 64-bit supervisor segment enable.
        const SX = 1 << 6;
        /// 64-bit kernel segment enable.
        const KX = 1 << 7;
        /// Interrupt mask IM0..IM7.
        const IM = 0xff << 8;
        /// NMI reset indication.
        const NMI = 1 << 19;
        /// Soft reset indication.
        const SR = 1 << 20;
        /// TLB shutdown.
        const TS = 1 << 21;
        /// Bootstrap exception vectors.
        const BEV = 1 << 22;
        /// Floating-point register mode.
        const FR = 1 << 26;
        /// Coprocessor 0 usable in user mode.
        const CU0 = 1 << 28;
        /// Coprocessor 1 usable.
        const CU1 = 1 << 29;
    }
}

impl Status {
    /// The interrupt mask byte IM7..IM0.
    pub const fn interrupt_mask(self) -> u8 {
        (self.bits() >> 8) as u8
    }
}

bitflags! {
    /// Cause register single-bit fields (Volume III, "Cause Register"); the multi-bit fields
    /// have accessor methods.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cause: u32 {
        /// Software interrupt 0 pending.
        const IP0 = 1 << 8;
        /// Software interrupt 1 pending.
        const IP1 = 1 << 9;
        /// Hardware interrupt 5 (IP7), where the timer interrupt goes (IntCtl.IPTI = 7).
        const IP7 = 1 << 15;
        /// Watch exception deferred.
        const WP = 1 << 22;
        /// Use the special interrupt vector.
        const IV = 1 << 23;
        /// Performance counter interrupt pending.
        const PCI = 1 << 26;
        /// Disable Count.
        const DC = 1 << 27;
        /// Timer interrupt pending.
        const TI = 1 << 30;
        /// Last exception was in a branch delay slot.
        const BD = 1 << 31;
        // Multi-bit fields, declared so that `from_bits_truncate` keeps them.
        /// The CE field (bits 29:28).
        const CE_FIELD = 0b11 << 28;
        /// The IP field (bits 15:8).
        const IP_FIELD = 0xff << 8;
        /// The ExcCode field (bits 6:2).
        const EXC_CODE_FIELD = 0x1f << 2;
    }
}

impl Cause {
    /// The coprocessor number of a Coprocessor Unusable exception.
    pub const fn ce(self) -> u8 {
        ((self.bits() >> 28) & 3) as u8
    }

    /// Pending interrupts IP7..IP0.
    pub const fn pending(self) -> u8 {
        (self.bits() >> 8) as u8
    }

    /// The raw ExcCode field.
    pub const fn exc_code_bits(self) -> u8 {
        ((self.bits() >> 2) & 0x1f) as u8
    }

    /// The decoded ExcCode, or `None` for a reserved value.
    pub const fn exc_code(self) -> Option<ExcCode> {
        ExcCode::from_bits(self.exc_code_bits())
    }

    /// `self` with ExcCode replaced by `code` and CE by `ce`.
    pub const fn with_exception(self, code: ExcCode, ce: u8) -> Cause {
        let cleared = self.bits() & !(Cause::EXC_CODE_FIELD.bits() | Cause::CE_FIELD.bits());
        Cause::from_bits_retain(cleared | (code as u32) << 2 | ((ce as u32) & 3) << 28)
    }
}

/// Exception codes (Volume III, table "Cause Register ExcCode Field").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExcCode {
    /// Interrupt.
    Int = 0,
    /// TLB modification.
    Mod = 1,
    /// TLB miss or invalid on a load or fetch.
    TlbL = 2,
    /// TLB miss or invalid on a store.
    TlbS = 3,
    /// Address error on a load or fetch.
    AdEL = 4,
    /// Address error on a store.
    AdES = 5,
    /// Bus error on a fetch.
    Ibe = 6,
    /// Bus error on a data access.
    Dbe = 7,
    /// SYSCALL.
    Sys = 8,
    /// BREAK.
    Bp = 9,
    /// Reserved instruction.
    Ri = 10,
    /// Coprocessor unusable.
    CpU = 11,
    /// Integer overflow.
    Ov = 12,
    /// Trap instruction.
    Tr = 13,
    /// Floating-point exception.
    Fpe = 15,
    /// Watch.
    Watch = 23,
    /// Machine check.
    MCheck = 24,
    /// Cache error.
    CacheErr = 30,
}

impl ExcCode {
    /// Decodes a 5-bit ExcCode value; reserved and unmodelled values give `None`.
    pub const fn from_bits(bits: u8) -> Option<ExcCode> {
        Some(match bits {
            0 => ExcCode::Int,
            1 => ExcCode::Mod,
            2 => ExcCode::TlbL,
            3 => ExcCode::TlbS,
            4 => ExcCode::AdEL,
            5 => ExcCode::AdES,
            6 => ExcCode::Ibe,
            7 => ExcCode::Dbe,
            8 => ExcCode::Sys,
            9 => ExcCode::Bp,
            10 => ExcCode::Ri,
            11 => ExcCode::CpU,
            12 => ExcCode::Ov,
            13 => ExcCode::Tr,
            15 => ExcCode::Fpe,
            23 => ExcCode::Watch,
            24 => ExcCode::MCheck,
            30 => ExcCode::CacheErr,
            _ => return None,
        })
    }
}

/// The privilege the guest currently runs at, from its Status.KSU/EXL/ERL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMode {
    /// Guest kernel mode (KSU = kernel, or EXL or ERL set).
    Kernel,
    /// Guest user mode.
    User,
}

/// Something the host must do after a guest CP0 write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Cp0Effect {
    /// Nothing beyond the register update.
    None,
    /// EntryHi.ASID changed: mappings derived for the old guest ASID are no longer the
    /// current ones; the host switches or flushes its derived (shadow) mappings.
    AsidChanged {
        /// ASID before the write.
        old: u8,
        /// ASID after the write.
        new: u8,
    },
    /// Compare written: the timer interrupt is acknowledged (Cause.TI and IP7 already
    /// cleared here); the host reprograms its timer for the new Compare.
    TimerAck {
        /// The new Compare value.
        compare: u32,
    },
    /// Count written: the host rebases the guest's Count on its own timer.
    CountRebase {
        /// The new Count value.
        count: u32,
    },
    /// Status changed: mode and interrupt enables must be re-evaluated.
    StatusChanged {
        /// Status before the write.
        old: Status,
        /// Status after the write.
        new: Status,
    },
    /// Cause changed (software interrupts or DC): re-evaluate pending interrupts and Count.
    CauseChanged {
        /// Cause before the write.
        old: Cause,
        /// Cause after the write.
        new: Cause,
    },
}

/// Static description of one implemented register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegSpec {
    /// Bits a guest MTC0/DMTC0 may change.
    pub writable: u64,
    /// A 64-bit register (otherwise 32 bits, read sign-extended).
    pub wide: bool,
}

/// Largest guest TLB supported (Config1.MMUSize-1 is 6 bits).
pub const MAX_TLB_ENTRIES: usize = 64;

/// Error building a guest CP0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cp0Error {
    /// The requested TLB size is 0 or larger than [`MAX_TLB_ENTRIES`].
    BadTlbSize(usize),
}

impl core::fmt::Display for Cp0Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Cp0Error::BadTlbSize(n) => {
                write!(f, "guest TLB size {n} not in 1..={MAX_TLB_ENTRIES}")
            }
        }
    }
}

/// The virtual CPU a guest sees: which architecture its identity registers (PRId, Config0-5)
/// describe. Chosen per VM (layout property `cpu`), so a guest kernel built for MIPS32 sees a
/// MIPS32 CPU while the 64-bit test guests keep theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuModel {
    /// A MIPS64 Release 2 CPU with 32-bit compatibility segments only (Config0.AT = 1),
    /// 32 KiB 4-way L1 caches.
    #[default]
    Mips64R2,
    /// A MIPS32 Release 2 CPU (Config0.AT = 0) with the PRId of a MIPS 24Kc and 16 KiB
    /// 4-way L1 caches: 4 KiB per way, so neither cache aliases with 4 KiB pages and a
    /// guest kernel needs no cache flushing for aliases (every CACHE op is a trap).
    Mips32R2,
}

impl CpuModel {
    /// The PRId value the guest reads: company 1 (MIPS Technologies), implementation
    /// 0x89 (a MIPS64 R2 class core) or 0x93 (24K), revision 0.
    pub fn prid(self) -> u32 {
        match self {
            CpuModel::Mips64R2 => 0x0001_8900,
            CpuModel::Mips32R2 => 0x0001_9300,
        }
    }

    /// Config0.AT: 1 = MIPS64 with 32-bit segments only, 0 = MIPS32.
    pub fn architecture_type(self) -> u32 {
        match self {
            CpuModel::Mips64R2 => 1,
            CpuModel::Mips32R2 => 0,
        }
    }

    /// The cache fields of Config1 (IS, IL, IA, DS, DL, DA), the same for both caches.
    fn config1_caches(self) -> u32 {
        let (sets_code, line_code, ways_minus_1) = match self {
            // 256 sets, 32-byte lines, 4 ways: 32 KiB.
            CpuModel::Mips64R2 => (2, 4, 3),
            // 128 sets, 32-byte lines, 4 ways: 16 KiB, 4 KiB per way.
            CpuModel::Mips32R2 => (1, 4, 3),
        };
        let one = (sets_code << 6) | (line_code << 3) | ways_minus_1;
        (one << 16) | (one << 7)
    }
}

/// Geometry of one L1 cache as Config1 reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheGeometry {
    /// Sets per way.
    pub sets: u32,
    /// Line size in bytes (0 = no cache).
    pub line_bytes: u32,
    /// Associativity.
    pub ways: u32,
}

impl CacheGeometry {
    /// Bytes of one way: more than the page size means virtual aliases.
    pub fn way_bytes(&self) -> u32 {
        self.sets * self.line_bytes
    }

    /// Decodes the instruction (`data` = false) or data cache fields of a Config1 value.
    pub fn from_config1(config1: u32, data: bool) -> Self {
        let field = (config1 >> if data { 7 } else { 16 }) & 0x1ff;
        let line = (field >> 3) & 7;
        CacheGeometry {
            sets: 64 << ((field >> 6) & 7),
            line_bytes: if line == 0 { 0 } else { 2 << line },
            ways: (field & 7) + 1,
        }
    }
}

/// What the guest's CPU reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cp0Config {
    /// Number of guest TLB entries, 1..=64, reported in Config1.MMUSize-1.
    pub tlb_entries: usize,
    /// The CPU model: PRId, Config0.AT and the cache geometry.
    pub model: CpuModel,
    /// The virtual CPU number reported in EBase.CPUNum (10 bits).
    pub cpu_num: u16,
}

impl Default for Cp0Config {
    fn default() -> Self {
        Cp0Config {
            tlb_entries: MAX_TLB_ENTRIES,
            model: CpuModel::default(),
            cpu_num: 0,
        }
    }
}

/// Writable bits of Status: CU0, BEV, TS, IM, KX, UX, UM, ERL, EXL, IE. No FPU, no
/// supervisor mode, no reverse endian, so CU1, FR, RE, SX and KSU bit 3 read as zero. TS is
/// set by a machine check (a duplicate TLB match) and cleared by the guest; it does not shut
/// the TLB down here.
pub const STATUS_WRITABLE: u64 = 0x1060_ffb7;
/// Writable bits of Cause: DC, IV and the two software interrupts IP1..IP0.
pub const CAUSE_WRITABLE: u64 = 0x0880_0300;
/// Writable bits of EBase: the exception base inside the guest's 512 MiB KSEG0 window.
pub const EBASE_WRITABLE: u64 = 0x1fff_f000;
/// Writable bits of EntryHi: R (63:62), VPN2 for 40 virtual address bits (39:13), ASID (7:0).
pub const ENTRY_HI_WRITABLE: u64 = 0xc000_00ff_ffff_e0ff;
/// Writable bits of EntryLo0/1: PFN for 36 physical address bits, C, D, V, G.
pub const ENTRY_LO_WRITABLE: u64 = 0x3fff_ffff;
/// Writable bits of PageMask: Mask (28:13), 4 KiB to 256 MiB pages.
pub const PAGE_MASK_WRITABLE: u64 = 0x1fff_e000;
/// Writable bits of HWREna: CPUNum, SYNCI_Step, CC, CCRes and ULR.
pub const HWRENA_WRITABLE: u64 = 0x2000_000f;
/// Writable bits of Context: PTEBase (63:23).
pub const CONTEXT_WRITABLE: u64 = !0x7f_ffff;
/// Writable bits of XContext: PTEBase (63:33), for 40 virtual address bits.
pub const XCONTEXT_WRITABLE: u64 = !0x1_ffff_ffff;
/// Config.K0, the only writable Config field.
pub const CONFIG0_WRITABLE: u64 = 0x7;

/// Guest cache line size, reported by RDHWR SYNCI_Step.
pub const CACHE_LINE_BYTES: u64 = 32;
/// Config.M (next Config register present).
const CONFIG_M: u32 = 1 << 31;
/// Config3.ULRI: UserLocal implemented.
const CONFIG3_ULRI: u32 = 1 << 13;
/// Config4.KScrExist: KScratch at selects 2 and 3.
const CONFIG4_KSCR_EXIST: u32 = 0b1100 << 16;

/// The guest CP0 register file.
#[derive(Clone, PartialEq, Eq)]
pub struct Cp0 {
    values: [u64; 256],
    tlb_entries: u8,
}

impl core::fmt::Debug for Cp0 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cp0")
            .field("status", &self.status())
            .field("cause", &self.cause())
            .field("epc", &self.get(Cp0Reg::EPC))
            .field("entry_hi", &self.get(Cp0Reg::ENTRY_HI))
            .field("tlb_entries", &self.tlb_entries)
            .finish_non_exhaustive()
    }
}

impl Cp0 {
    /// A CP0 in its reset state (Status.BEV and Status.ERL set, Random at the top).
    pub fn new(config: Cp0Config) -> Result<Self, Cp0Error> {
        if config.tlb_entries == 0 || config.tlb_entries > MAX_TLB_ENTRIES {
            return Err(Cp0Error::BadTlbSize(config.tlb_entries));
        }
        let entries = config.tlb_entries as u32;
        let mut cp0 = Cp0 {
            values: [0; 256],
            tlb_entries: entries as u8,
        };
        let config0 =
            CONFIG_M | (config.model.architecture_type() << 13) | (1 << 10) | (1 << 7) | 3;
        let config1 = CONFIG_M | ((entries - 1) << 25) | config.model.config1_caches();
        let init: [(Cp0Reg, u32); 12] = [
            (Cp0Reg::RANDOM, entries - 1),
            (Cp0Reg::STATUS, (Status::BEV | Status::ERL).bits()),
            // Timer interrupt on IP7 (IPTI = 7).
            (Cp0Reg::INTCTL, 7 << 29),
            (Cp0Reg::PRID, config.model.prid()),
            (
                Cp0Reg::EBASE,
                0x8000_0000 | u32::from(config.cpu_num & 0x3ff),
            ),
            // M, AT (the model's: 1 = MIPS64 with 32-bit compatibility segments only,
            // 0 = MIPS32), AR = 1 (Release 2), MT = 1 (standard TLB), K0 = 3 (cacheable).
            (Cp0Reg::CONFIG0, config0),
            (Cp0Reg::CONFIG1, config1),
            (Cp0Reg::CONFIG2, CONFIG_M),
            (Cp0Reg::CONFIG3, CONFIG_M | CONFIG3_ULRI),
            (Cp0Reg::CONFIG4, CONFIG_M | CONFIG4_KSCR_EXIST),
            (Cp0Reg::CONFIG5, 0),
            (Cp0Reg::WIRED, 0),
        ];
        for (reg, value) in init {
            cp0.values[reg.index()] = u64::from(value);
        }
        Ok(cp0)
    }

    /// Number of guest TLB entries.
    pub fn tlb_entries(&self) -> usize {
        usize::from(self.tlb_entries)
    }

    /// Mask covering every valid TLB index (Index and Wired fields).
    pub fn tlb_index_mask(&self) -> u64 {
        u64::from(self.tlb_entries).next_power_of_two() - 1
    }

    /// The description of `reg`, or `None` if this model does not implement it.
    pub fn spec(&self, reg: Cp0Reg) -> Option<RegSpec> {
        let narrow = |writable| {
            Some(RegSpec {
                writable,
                wide: false,
            })
        };
        let wide = |writable| {
            Some(RegSpec {
                writable,
                wide: true,
            })
        };
        match (reg.reg, reg.sel) {
            (0, 0) | (6, 0) => narrow(self.tlb_index_mask()),
            (1, 0) => narrow(0),
            (2, 0) | (3, 0) => wide(ENTRY_LO_WRITABLE),
            (4, 0) => wide(CONTEXT_WRITABLE),
            (4, 2) | (14, 0) | (30, 0) | (31, 2) | (31, 3) => wide(u64::MAX),
            (5, 0) => narrow(PAGE_MASK_WRITABLE),
            (7, 0) => narrow(HWRENA_WRITABLE),
            (8, 0) | (17, 0) => wide(0),
            (9, 0) | (11, 0) | (28, 0) | (28, 1) | (29, 0) | (29, 1) => narrow(0xffff_ffff),
            (10, 0) => wide(ENTRY_HI_WRITABLE),
            (12, 0) => narrow(STATUS_WRITABLE),
            (12, 1) | (12, 2) | (12, 3) | (15, 0) => narrow(0),
            (13, 0) => narrow(CAUSE_WRITABLE),
            (15, 1) => narrow(EBASE_WRITABLE),
            (16, 0) => narrow(CONFIG0_WRITABLE),
            (16, 1..=5) => narrow(0),
            (20, 0) => wide(XCONTEXT_WRITABLE),
            _ => None,
        }
    }

    /// The stored value of `reg` (32-bit registers zero-extended); 0 if not implemented.
    pub fn get(&self, reg: Cp0Reg) -> u64 {
        self.values[reg.index()]
    }

    /// Hypervisor-side write that ignores the guest mask (exception delivery, TLBP/TLBR,
    /// timer). The value is truncated to the register's width; unimplemented registers stay 0.
    pub fn set_raw(&mut self, reg: Cp0Reg, value: u64) {
        if let Some(spec) = self.spec(reg) {
            self.values[reg.index()] = if spec.wide {
                value
            } else {
                value & 0xffff_ffff
            };
        }
    }

    /// What MFC0 returns: the low 32 bits, sign-extended.
    pub fn mfc0(&self, reg: Cp0Reg) -> u64 {
        sign_extend32(self.get(reg))
    }

    /// What DMFC0 returns: a 64-bit register whole, a 32-bit one sign-extended.
    pub fn dmfc0(&self, reg: Cp0Reg) -> u64 {
        match self.spec(reg) {
            Some(RegSpec { wide: true, .. }) => self.get(reg),
            _ => sign_extend32(self.get(reg)),
        }
    }

    /// Guest MTC0: writes the sign-extended low 32 bits of `value` under the mask.
    pub fn mtc0(&mut self, reg: Cp0Reg, value: u64) -> Cp0Effect {
        self.guest_write(reg, sign_extend32(value))
    }

    /// Guest DMTC0: writes `value` under the mask (a 32-bit register takes the low half).
    pub fn dmtc0(&mut self, reg: Cp0Reg, value: u64) -> Cp0Effect {
        self.guest_write(reg, value)
    }

    fn guest_write(&mut self, reg: Cp0Reg, value: u64) -> Cp0Effect {
        let Some(spec) = self.spec(reg) else {
            return Cp0Effect::None;
        };
        let old = self.get(reg);
        let mut new = (old & !spec.writable) | (value & spec.writable);
        if !spec.wide {
            new &= 0xffff_ffff;
        }
        self.values[reg.index()] = new;
        match reg {
            Cp0Reg::ENTRY_HI if (old as u8) != (new as u8) => Cp0Effect::AsidChanged {
                old: old as u8,
                new: new as u8,
            },
            Cp0Reg::COMPARE => {
                self.set_cause(self.cause() - (Cause::TI | Cause::IP7));
                Cp0Effect::TimerAck {
                    compare: new as u32,
                }
            }
            Cp0Reg::COUNT => Cp0Effect::CountRebase { count: new as u32 },
            Cp0Reg::WIRED => {
                // Writing Wired puts Random back at the top (Volume III, "Wired Register").
                self.set_raw(Cp0Reg::RANDOM, u64::from(self.tlb_entries) - 1);
                Cp0Effect::None
            }
            Cp0Reg::STATUS if old != new => Cp0Effect::StatusChanged {
                old: Status::from_bits_retain(old as u32),
                new: Status::from_bits_retain(new as u32),
            },
            Cp0Reg::CAUSE if old != new => Cp0Effect::CauseChanged {
                old: Cause::from_bits_retain(old as u32),
                new: Cause::from_bits_retain(new as u32),
            },
            _ => Cp0Effect::None,
        }
    }

    /// Status.
    pub fn status(&self) -> Status {
        Status::from_bits_retain(self.get(Cp0Reg::STATUS) as u32)
    }

    /// Replaces Status (hypervisor side, no mask).
    pub fn set_status(&mut self, status: Status) {
        self.set_raw(Cp0Reg::STATUS, u64::from(status.bits()));
    }

    /// Cause.
    pub fn cause(&self) -> Cause {
        Cause::from_bits_retain(self.get(Cp0Reg::CAUSE) as u32)
    }

    /// Replaces Cause (hypervisor side, no mask).
    pub fn set_cause(&mut self, cause: Cause) {
        self.set_raw(Cp0Reg::CAUSE, u64::from(cause.bits()));
    }

    /// The current guest ASID (EntryHi bits 7:0).
    pub fn asid(&self) -> u8 {
        self.get(Cp0Reg::ENTRY_HI) as u8
    }

    /// The guest's privilege level.
    pub fn mode(&self) -> GuestMode {
        let status = self.status();
        if status.intersects(Status::EXL | Status::ERL) || !status.contains(Status::UM) {
            GuestMode::Kernel
        } else {
            GuestMode::User
        }
    }

    /// Whether the guest may use CP0 instructions now (kernel mode, or Status.CU0).
    pub fn cp0_usable(&self) -> bool {
        self.mode() == GuestMode::Kernel || self.status().contains(Status::CU0)
    }

    /// The virtual CPU number (EBase.CPUNum).
    pub fn cpu_num(&self) -> u16 {
        (self.get(Cp0Reg::EBASE) & 0x3ff) as u16
    }

    /// Marks the guest timer interrupt pending (Count reached Compare).
    pub fn raise_timer(&mut self) {
        self.set_cause(self.cause() | Cause::TI | Cause::IP7);
    }

    /// Sets the hardware interrupt lines IP6..IP2 (device interrupts) to `lines` (bits 4:0
    /// for IP2..IP6); the timer line IP7 and software lines are left alone.
    pub fn set_hw_interrupts(&mut self, lines: u8) {
        let field = 0x1f << 10;
        let bits = (self.cause().bits() & !field) | (u32::from(lines) & 0x1f) << 10;
        self.set_cause(Cause::from_bits_retain(bits));
    }

    /// Whether an interrupt would be taken now: IE set, EXL and ERL clear, and a pending
    /// interrupt not masked by Status.IM.
    pub fn interrupt_deliverable(&self) -> bool {
        let status = self.status();
        status.contains(Status::IE)
            && !status.intersects(Status::EXL | Status::ERL)
            && self.cause().pending() & status.interrupt_mask() != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cp0() -> Cp0 {
        Cp0::new(Cp0Config::default()).unwrap()
    }

    #[test]
    fn bad_tlb_sizes_are_refused() {
        for n in [0, 65, 1000] {
            let config = Cp0Config {
                tlb_entries: n,
                ..Cp0Config::default()
            };
            assert_eq!(Cp0::new(config), Err(Cp0Error::BadTlbSize(n)));
        }
    }

    #[test]
    fn reset_state() {
        let c = cp0();
        assert_eq!(c.status(), Status::BEV | Status::ERL);
        assert_eq!(c.get(Cp0Reg::RANDOM), 63);
        assert_eq!(c.mfc0(Cp0Reg::EBASE), 0xffff_ffff_8000_0000);
        assert_eq!(c.mode(), GuestMode::Kernel);
        // Config1.MMUSize-1 reports the TLB size.
        assert_eq!((c.get(Cp0Reg::CONFIG1) >> 25) & 0x3f, 63);
        let small = Cp0::new(Cp0Config {
            tlb_entries: 16,
            cpu_num: 3,
            ..Cp0Config::default()
        })
        .unwrap();
        assert_eq!((small.get(Cp0Reg::CONFIG1) >> 25) & 0x3f, 15);
        assert_eq!(small.cpu_num(), 3);
        assert_eq!(small.tlb_index_mask(), 15);
    }

    #[test]
    fn cpu_models_identify_themselves() {
        let m64 = cp0();
        let m32 = Cp0::new(Cp0Config {
            model: CpuModel::Mips32R2,
            ..Cp0Config::default()
        })
        .unwrap();
        let at = |c: &Cp0| (c.get(Cp0Reg::CONFIG0) >> 13) & 3;
        let ar = |c: &Cp0| (c.get(Cp0Reg::CONFIG0) >> 10) & 7;
        assert_eq!(at(&m64), 1);
        assert_eq!(at(&m32), 0);
        assert_eq!((ar(&m64), ar(&m32)), (1, 1));
        // PRId: company MIPS Technologies; 24K for the MIPS32 model.
        assert_eq!(m32.get(Cp0Reg::PRID), 0x0001_9300);
        assert_eq!(m64.get(Cp0Reg::PRID), 0x0001_8900);
        assert_eq!((m32.get(Cp0Reg::PRID) >> 16) & 0xff, 1);
        for c in [&m64, &m32] {
            // Config1-4 chain with M; Config5 ends it. KScratch and UserLocal present.
            for reg in [
                Cp0Reg::CONFIG0,
                Cp0Reg::CONFIG1,
                Cp0Reg::CONFIG2,
                Cp0Reg::CONFIG3,
            ] {
                assert_ne!(c.get(reg) & (1 << 31), 0, "{reg:?}");
            }
            assert_ne!(c.get(Cp0Reg::CONFIG4) & (1 << 31), 0);
            assert_eq!(c.get(Cp0Reg::CONFIG5), 0);
            assert_ne!(c.get(Cp0Reg::CONFIG3) & (1 << 13), 0);
            // No FPU, EJTAG, watch or performance counters in Config1.
            assert_eq!(c.get(Cp0Reg::CONFIG1) & 0x1f, 0);
        }
        // MIPS32 caches: 16 KiB, 4 ways of 4 KiB (no aliases with 4 KiB pages); the line
        // size is what RDHWR SYNCI_Step reports.
        let config1 = m32.get(Cp0Reg::CONFIG1) as u32;
        for data in [false, true] {
            let cache = CacheGeometry::from_config1(config1, data);
            assert_eq!(
                cache,
                CacheGeometry {
                    sets: 128,
                    line_bytes: 32,
                    ways: 4
                }
            );
            assert!(cache.way_bytes() <= 4096);
            assert_eq!(u64::from(cache.line_bytes), CACHE_LINE_BYTES);
        }
        // The 64-bit model keeps its 32 KiB caches (8 KiB ways).
        let config1 = m64.get(Cp0Reg::CONFIG1) as u32;
        let cache = CacheGeometry::from_config1(config1, true);
        assert_eq!(
            cache,
            CacheGeometry {
                sets: 256,
                line_bytes: 32,
                ways: 4
            }
        );
        assert_eq!(CacheGeometry::from_config1(config1, false), cache);
        // Identity registers are read-only to the guest (Config0 only K0).
        let mut m = m32.clone();
        let _ = m.mtc0(Cp0Reg::PRID, 0);
        let _ = m.mtc0(Cp0Reg::CONFIG0, 0);
        let _ = m.mtc0(Cp0Reg::CONFIG1, 0);
        assert_eq!(m.get(Cp0Reg::PRID), 0x0001_9300);
        assert_eq!(at(&m), 0);
        assert_eq!(m.get(Cp0Reg::CONFIG0) & 7, 0);
        assert_eq!(m.get(Cp0Reg::CONFIG1), m32.get(Cp0Reg::CONFIG1));
    }

    #[test]
    fn status_mask() {
        let mut c = cp0();
        let effect = c.mtc0(Cp0Reg::STATUS, 0xffff_ffff);
        assert_eq!(c.get(Cp0Reg::STATUS), STATUS_WRITABLE);
        assert!(matches!(effect, Cp0Effect::StatusChanged { .. }));
        // CU1, FR, RE and the supervisor bit stay clear.
        assert!(!c
            .status()
            .intersects(Status::CU1 | Status::FR | Status::SUPERVISOR));
        let effect = c.mtc0(Cp0Reg::STATUS, 0);
        assert_eq!(c.get(Cp0Reg::STATUS), 0);
        assert_eq!(
            effect,
            Cp0Effect::StatusChanged {
                old: Status::from_bits_retain(STATUS_WRITABLE as u32),
                new: Status::empty()
            }
        );
        assert_eq!(c.mtc0(Cp0Reg::STATUS, 0), Cp0Effect::None);
    }

    #[test]
    fn cause_keeps_hardware_fields() {
        let mut c = cp0();
        c.set_cause(
            Cause::BD | Cause::TI | Cause::IP7 | Cause::empty().with_exception(ExcCode::CpU, 1),
        );
        let _ = c.mtc0(Cp0Reg::CAUSE, 0);
        let cause = c.cause();
        assert!(cause.contains(Cause::BD | Cause::TI | Cause::IP7));
        assert_eq!(cause.exc_code(), Some(ExcCode::CpU));
        assert_eq!(cause.ce(), 1);
        let effect = c.mtc0(Cp0Reg::CAUSE, 0x0300);
        assert!(c.cause().contains(Cause::IP0 | Cause::IP1));
        assert!(matches!(effect, Cp0Effect::CauseChanged { .. }));
    }

    #[test]
    fn entry_hi_asid_change_is_reported() {
        let mut c = cp0();
        assert_eq!(
            c.dmtc0(Cp0Reg::ENTRY_HI, 0x6000_2005),
            Cp0Effect::AsidChanged { old: 0, new: 5 }
        );
        // Same ASID, different VPN2: nothing to flush.
        assert_eq!(c.dmtc0(Cp0Reg::ENTRY_HI, 0x6000_4005), Cp0Effect::None);
        // Bits 12:8 are not writable.
        let _ = c.dmtc0(Cp0Reg::ENTRY_HI, 0x1f05);
        assert_eq!(c.get(Cp0Reg::ENTRY_HI), 0x05);
        // MTC0 sign-extends: 0x8000_0000 sets R and the high VPN2 bits.
        let _ = c.mtc0(Cp0Reg::ENTRY_HI, 0x8000_2005);
        assert_eq!(c.get(Cp0Reg::ENTRY_HI), 0xc000_00ff_8000_2005);
    }

    #[test]
    fn compare_write_acknowledges_timer() {
        let mut c = cp0();
        c.raise_timer();
        assert!(c.cause().contains(Cause::TI | Cause::IP7));
        assert_eq!(
            c.mtc0(Cp0Reg::COMPARE, 1234),
            Cp0Effect::TimerAck { compare: 1234 }
        );
        assert!(!c.cause().intersects(Cause::TI | Cause::IP7));
        assert_eq!(
            c.mtc0(Cp0Reg::COUNT, 99),
            Cp0Effect::CountRebase { count: 99 }
        );
    }

    #[test]
    fn wired_resets_random_and_masks_index() {
        let mut c = cp0();
        c.set_raw(Cp0Reg::RANDOM, 10);
        let _ = c.mtc0(Cp0Reg::WIRED, 0x1ff);
        assert_eq!(c.get(Cp0Reg::WIRED), 0x3f);
        assert_eq!(c.get(Cp0Reg::RANDOM), 63);
        let _ = c.mtc0(Cp0Reg::RANDOM, 5);
        assert_eq!(c.get(Cp0Reg::RANDOM), 63);
        c.set_raw(Cp0Reg::INDEX, 1 << 31);
        let _ = c.mtc0(Cp0Reg::INDEX, 0xffff_ffff);
        assert_eq!(c.get(Cp0Reg::INDEX), (1 << 31) | 0x3f);
    }

    #[test]
    fn ebase_stays_in_kseg0_window() {
        let mut c = Cp0::new(Cp0Config {
            cpu_num: 2,
            ..Cp0Config::default()
        })
        .unwrap();
        let _ = c.mtc0(Cp0Reg::EBASE, 0xffff_ffff);
        assert_eq!(c.get(Cp0Reg::EBASE), 0x9fff_f002);
        let _ = c.mtc0(Cp0Reg::EBASE, 0x4000_1000);
        assert_eq!(c.get(Cp0Reg::EBASE), 0x8000_1002);
    }

    #[test]
    fn narrow_and_wide_reads() {
        let mut c = cp0();
        let _ = c.dmtc0(Cp0Reg::EPC, 0x1234_5678_9abc_def0);
        assert_eq!(c.dmfc0(Cp0Reg::EPC), 0x1234_5678_9abc_def0);
        assert_eq!(c.mfc0(Cp0Reg::EPC), 0xffff_ffff_9abc_def0);
        let _ = c.dmtc0(Cp0Reg::COMPARE, 0xffff_ffff_8000_0001);
        assert_eq!(c.get(Cp0Reg::COMPARE), 0x8000_0001);
        assert_eq!(c.dmfc0(Cp0Reg::COMPARE), 0xffff_ffff_8000_0001);
    }

    #[test]
    fn unimplemented_registers_read_zero_and_ignore_writes() {
        let mut c = cp0();
        let watch_lo = Cp0Reg::new(18, 0);
        assert_eq!(c.spec(watch_lo), None);
        assert_eq!(c.mtc0(watch_lo, 0x1234), Cp0Effect::None);
        assert_eq!(c.mfc0(watch_lo), 0);
        c.set_raw(watch_lo, 5);
        assert_eq!(c.get(watch_lo), 0);
    }

    #[test]
    fn mode_and_interrupts() {
        let mut c = cp0();
        c.set_status(Status::UM | Status::IE | Status::from_bits_retain(0x8000));
        assert_eq!(c.mode(), GuestMode::User);
        assert!(!c.cp0_usable());
        assert!(!c.interrupt_deliverable());
        c.raise_timer();
        assert!(c.interrupt_deliverable());
        c.set_status(c.status() | Status::EXL);
        assert_eq!(c.mode(), GuestMode::Kernel);
        assert!(!c.interrupt_deliverable());
        c.set_status(Status::UM | Status::CU0);
        assert!(c.cp0_usable());
        c.set_hw_interrupts(0b10001);
        assert_eq!(c.cause().pending(), 0b1000_0100 | 0b0100_0000);
    }

    #[test]
    fn exc_code_round_trip() {
        for bits in 0u8..32 {
            if let Some(code) = ExcCode::from_bits(bits) {
                assert_eq!(code as u8, bits);
                let cause = Cause::empty().with_exception(code, 0);
                assert_eq!(cause.exc_code(), Some(code));
            }
        }
        assert_eq!(ExcCode::from_bits(14), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Only writable bits move, whatever the previous contents and the value written.
        #[test]
        fn guest_writes_respect_masks(
            reg in 0u8..32, sel in 0u8..8, old: u64, value: u64, wide_op: bool,
        ) {
            let mut c = cp0();
            let reg = Cp0Reg::new(reg, sel);
            c.set_raw(reg, old);
            let before = c.get(reg);
            let _ = if wide_op { c.dmtc0(reg, value) } else { c.mtc0(reg, value) };
            let after = c.get(reg);
            let writable = c.spec(reg).map_or(0, |s| s.writable);
            prop_assert_eq!((before ^ after) & !writable, 0);
            if c.spec(reg).is_some_and(|s| !s.wide) {
                prop_assert_eq!(after >> 32, 0);
            }
        }
    }
}
