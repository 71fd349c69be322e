//! Guest image parsing: little-endian MIPS ELF files (32- or 64-bit) whose loadable
//! segments are linked into the guest's KSEG0 window (`docs/guest-abi.md`).
//!
//! Only parsing happens here; the VM copies the segments into guest RAM through the memory
//! core. Every offset and size read from the file is checked, so a broken image is a clear
//! error, never a panic.

use core::fmt;
use hv_emul::abi::{GUEST_KSEG0_BASE, GUEST_KSEG23_BASE, GUEST_KSEG_PHYS_MASK};

/// ELF machine number of MIPS.
const EM_MIPS: u16 = 8;
/// Program header type of a loadable segment.
const PT_LOAD: u32 = 1;
/// Most program headers looked at.
const MAX_PHDRS: usize = 64;

/// Why an image cannot be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageError {
    /// Not an ELF file, or not little-endian MIPS.
    NotMipsElf,
    /// A header or segment lies outside the file.
    Truncated,
    /// A segment or the entry point is outside the guest KSEG0 window.
    BadAddress(u64),
    /// A segment does not fit in the VM's RAM.
    TooLarge(u64),
    /// No loadable segment.
    Empty,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotMipsElf => write!(f, "not a little-endian MIPS ELF file"),
            Self::Truncated => write!(f, "ELF header or segment lies outside the file"),
            Self::BadAddress(a) => write!(f, "address {a:#x} is outside the guest KSEG0 window"),
            Self::TooLarge(end) => write!(f, "segment ends at GPA {end:#x}, beyond guest RAM"),
            Self::Empty => write!(f, "no loadable segment"),
        }
    }
}

/// One loadable segment: `file` bytes at guest physical `gpa`, then zeroes up to `mem_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// Guest physical address of the first byte.
    pub gpa: u64,
    /// Bytes taken from the file.
    pub file: &'a [u8],
    /// Size in memory (at least `file.len()`).
    pub mem_bytes: u64,
}

/// A parsed image.
#[derive(Debug, Clone)]
pub struct Image<'a> {
    /// Guest virtual entry point (in the KSEG0 window).
    pub entry: u64,
    /// Loadable segments.
    pub segments: alloc::vec::Vec<Segment<'a>>,
}

fn bytes<const N: usize>(data: &[u8], at: u64) -> Result<[u8; N], ImageError> {
    let at = usize::try_from(at).map_err(|_| ImageError::Truncated)?;
    data.get(at..at.checked_add(N).ok_or(ImageError::Truncated)?)
        .and_then(|s| s.try_into().ok())
        .ok_or(ImageError::Truncated)
}

fn u16_at(data: &[u8], at: u64) -> Result<u16, ImageError> {
    bytes::<2>(data, at).map(u16::from_le_bytes)
}

fn u32_at(data: &[u8], at: u64) -> Result<u32, ImageError> {
    bytes::<4>(data, at).map(u32::from_le_bytes)
}

fn u64_at(data: &[u8], at: u64) -> Result<u64, ImageError> {
    bytes::<8>(data, at).map(u64::from_le_bytes)
}

/// Guest physical address of a guest KSEG0-window virtual address. A 32-bit image's
/// addresses may arrive sign-extended or not; only the window's 32-bit values are accepted.
fn window_gpa(va: u64) -> Result<u64, ImageError> {
    let low = va & 0xffff_ffff;
    let sign_extended = low as u32 as i32 as i64 as u64;
    if (va == low || va == sign_extended) && (GUEST_KSEG0_BASE..GUEST_KSEG23_BASE).contains(&low) {
        Ok(low & GUEST_KSEG_PHYS_MASK)
    } else {
        Err(ImageError::BadAddress(va))
    }
}

/// A flat image: `data` loaded at guest physical `gpa`, entered at its first byte.
pub fn flat(data: &[u8], gpa: u64, ram_bytes: u64) -> Result<Image<'_>, ImageError> {
    let end = gpa
        .checked_add(data.len() as u64)
        .ok_or(ImageError::TooLarge(u64::MAX))?;
    if end > ram_bytes || end > GUEST_KSEG_PHYS_MASK {
        return Err(ImageError::TooLarge(end));
    }
    if data.is_empty() {
        return Err(ImageError::Empty);
    }
    Ok(Image {
        entry: GUEST_KSEG0_BASE | gpa,
        segments: alloc::vec![Segment {
            gpa,
            file: data,
            mem_bytes: data.len() as u64,
        }],
    })
}

/// Parses `data` as a guest ELF image for a VM with `ram_bytes` of RAM at GPA 0.
pub fn parse(data: &[u8], ram_bytes: u64) -> Result<Image<'_>, ImageError> {
    if data.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(ImageError::NotMipsElf);
    }
    let class64 = match data.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err(ImageError::NotMipsElf),
    };
    if data.get(5) != Some(&1) || u16_at(data, 18)? != EM_MIPS {
        return Err(ImageError::NotMipsElf);
    }
    let (entry, phoff, phentsize, phnum) = if class64 {
        (
            u64_at(data, 24)?,
            u64_at(data, 32)?,
            u16_at(data, 54)?,
            u16_at(data, 56)?,
        )
    } else {
        (
            u64::from(u32_at(data, 24)?),
            u64::from(u32_at(data, 28)?),
            u16_at(data, 42)?,
            u16_at(data, 44)?,
        )
    };
    window_gpa(entry)?;
    let mut segments = alloc::vec::Vec::new();
    for index in 0..usize::from(phnum).min(MAX_PHDRS) {
        let ph = phoff
            .checked_add(index as u64 * u64::from(phentsize))
            .ok_or(ImageError::Truncated)?;
        if u32_at(data, ph)? != PT_LOAD {
            continue;
        }
        let (offset, vaddr, filesz, memsz) = if class64 {
            (
                u64_at(data, ph + 8)?,
                u64_at(data, ph + 16)?,
                u64_at(data, ph + 32)?,
                u64_at(data, ph + 40)?,
            )
        } else {
            (
                u64::from(u32_at(data, ph + 4)?),
                u64::from(u32_at(data, ph + 8)?),
                u64::from(u32_at(data, ph + 16)?),
                u64::from(u32_at(data, ph + 20)?),
            )
        };
        if memsz == 0 {
            continue;
        }
        let gpa = window_gpa(vaddr)?;
        let end = gpa
            .checked_add(memsz.max(filesz))
            .ok_or(ImageError::TooLarge(u64::MAX))?;
        if end > ram_bytes {
            return Err(ImageError::TooLarge(end));
        }
        let start = usize::try_from(offset).map_err(|_| ImageError::Truncated)?;
        let len = usize::try_from(filesz).map_err(|_| ImageError::Truncated)?;
        let file = data
            .get(start..start.checked_add(len).ok_or(ImageError::Truncated)?)
            .ok_or(ImageError::Truncated)?;
        segments.push(Segment {
            gpa,
            file,
            mem_bytes: memsz.max(filesz),
        });
    }
    if segments.is_empty() {
        return Err(ImageError::Empty);
    }
    Ok(Image { entry, segments })
}
