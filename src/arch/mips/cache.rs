//! Cache geometry probe from Config1 (L1) and Config2 (L2), PRA 9.42/9.43.

use super::cp0;

/// Size and shape of one cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheGeometry {
    /// Sets per way.
    pub sets: u32,
    /// Associativity.
    pub ways: u32,
    /// Line size in bytes (0 = no cache).
    pub line_bytes: u32,
}

impl CacheGeometry {
    /// Total size in bytes.
    pub fn size_bytes(&self) -> u32 {
        self.sets * self.ways * self.line_bytes
    }

    /// Decodes the L1 S/L/A fields at `shift` (S at shift+6, L at shift+3, A at shift).
    fn from_l1_fields(config1: u32, shift: u32) -> Self {
        let s = (config1 >> (shift + 6)) & 7;
        let l = (config1 >> (shift + 3)) & 7;
        let a = (config1 >> shift) & 7;
        // S=7 encodes 32 sets; otherwise 64 << S. L=0 means no cache.
        let sets = if s == 7 { 32 } else { 64 << s };
        let line_bytes = if l == 0 { 0 } else { 2 << l };
        Self {
            sets,
            ways: a + 1,
            line_bytes,
        }
    }
}

/// Level 1 instruction cache (Config1 IS/IL/IA, bits 24:16).
pub fn l1i() -> CacheGeometry {
    CacheGeometry::from_l1_fields(cp0::config1(), 16)
}

/// Level 1 data cache (Config1 DS/DL/DA, bits 15:7).
pub fn l1d() -> CacheGeometry {
    CacheGeometry::from_l1_fields(cp0::config1(), 7)
}

/// Level 2 cache (Config2 SS/SL/SA, bits 11:0), if Config2 describes one.
pub fn l2() -> CacheGeometry {
    let config2 = cp0::config2();
    let s = (config2 >> 8) & 0xf;
    let l = (config2 >> 4) & 0xf;
    let a = config2 & 0xf;
    if l == 0 {
        return CacheGeometry {
            sets: 0,
            ways: 0,
            line_bytes: 0,
        };
    }
    CacheGeometry {
        sets: 64 << s,
        ways: a + 1,
        line_bytes: 2 << l,
    }
}
