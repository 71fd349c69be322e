//! A writer of flattened device trees (DTB, devicetree specification v0.4, chapter 5),
//! version 17, laid out the way dtc lays them out: header, an empty memory reservation
//! block, the structure block, the strings block (each property name stored once).
//!
//! The writer enforces the structure [`crate::vmconfig::check_blob`] demands of any blob it
//! reads: one root node, properties before child nodes, names non-empty (except the root's),
//! without NUL or `/`, nesting depth bounded. Misuse is an [`FdtError`], never a panic or a
//! malformed blob.

use alloc::vec::Vec;

/// FDT header magic.
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// Structure-block tokens.
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_END: u32 = 9;
/// Header size (version 17: ten 32-bit words).
const HEADER_BYTES: usize = 40;
/// Deepest nesting accepted (the root is depth 1).
pub const MAX_DEPTH: usize = 8;

/// Why a tree cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdtError {
    /// A node or property name that is empty (a non-root node), holds NUL or `/`, or a second
    /// root node.
    BadName,
    /// A property outside any node, or after a child node of the same node.
    MisplacedProperty,
    /// `end_node` without an open node, or `finish` with nodes still open or no root.
    Unbalanced,
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The blob would exceed 4 GiB.
    TooLarge,
}

impl core::fmt::Display for FdtError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let text = match self {
            FdtError::BadName => "bad node or property name",
            FdtError::MisplacedProperty => "property outside a node or after a child node",
            FdtError::Unbalanced => "unbalanced nodes",
            FdtError::TooDeep => "nodes nested too deeply",
            FdtError::TooLarge => "device tree too large",
        };
        f.write_str(text)
    }
}

/// Builds one device tree: `begin_node("")` for the root, properties, child nodes,
/// `end_node`, then [`FdtWriter::finish`].
#[derive(Debug, Default, Clone)]
pub struct FdtWriter {
    structure: Vec<u8>,
    strings: Vec<u8>,
    /// Per open node: whether it already has a child node.
    open: Vec<bool>,
    root_done: bool,
}

impl FdtWriter {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    fn token(&mut self, token: u32) {
        self.structure.extend_from_slice(&token.to_be_bytes());
    }

    fn pad(&mut self) {
        while !self.structure.len().is_multiple_of(4) {
            self.structure.push(0);
        }
    }

    /// Opens a node; the root is `""`, others are `name` or `name@unit-address`.
    pub fn begin_node(&mut self, name: &str) -> Result<(), FdtError> {
        let is_root = self.open.is_empty();
        if is_root && (self.root_done || !name.is_empty()) {
            return Err(FdtError::BadName);
        }
        if !is_root && (name.is_empty() || name.contains(['\0', '/'])) {
            return Err(FdtError::BadName);
        }
        if self.open.len() >= MAX_DEPTH {
            return Err(FdtError::TooDeep);
        }
        if let Some(parent_has_child) = self.open.last_mut() {
            *parent_has_child = true;
        }
        self.token(FDT_BEGIN_NODE);
        self.structure.extend_from_slice(name.as_bytes());
        self.structure.push(0);
        self.pad();
        self.open.push(false);
        Ok(())
    }

    /// Closes the innermost open node.
    pub fn end_node(&mut self) -> Result<(), FdtError> {
        self.open.pop().ok_or(FdtError::Unbalanced)?;
        self.token(FDT_END_NODE);
        if self.open.is_empty() {
            self.root_done = true;
        }
        Ok(())
    }

    /// Offset of `name` in the strings block, adding it if new.
    fn name_offset(&mut self, name: &str) -> Result<u32, FdtError> {
        let mut at = 0;
        while at < self.strings.len() {
            let end = at + self.strings[at..].iter().position(|&b| b == 0).unwrap_or(0);
            if &self.strings[at..end] == name.as_bytes() {
                return u32::try_from(at).map_err(|_| FdtError::TooLarge);
            }
            at = end + 1;
        }
        let offset = u32::try_from(self.strings.len()).map_err(|_| FdtError::TooLarge)?;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        Ok(offset)
    }

    /// Adds a property with raw bytes to the innermost open node.
    pub fn property(&mut self, name: &str, value: &[u8]) -> Result<(), FdtError> {
        match self.open.last() {
            None => return Err(FdtError::MisplacedProperty),
            Some(true) => return Err(FdtError::MisplacedProperty),
            Some(false) => {}
        }
        if name.is_empty() || name.contains(['\0', '/']) {
            return Err(FdtError::BadName);
        }
        let len = u32::try_from(value.len()).map_err(|_| FdtError::TooLarge)?;
        let offset = self.name_offset(name)?;
        self.token(FDT_PROP);
        self.token(len);
        self.token(offset);
        self.structure.extend_from_slice(value);
        self.pad();
        Ok(())
    }

    /// A property without a value (`interrupt-controller;`).
    pub fn property_empty(&mut self, name: &str) -> Result<(), FdtError> {
        self.property(name, &[])
    }

    /// One 32-bit cell.
    pub fn property_u32(&mut self, name: &str, value: u32) -> Result<(), FdtError> {
        self.property(name, &value.to_be_bytes())
    }

    /// A list of 32-bit cells.
    pub fn property_cells(&mut self, name: &str, cells: &[u32]) -> Result<(), FdtError> {
        let bytes: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.property(name, &bytes)
    }

    /// One NUL-terminated string (a string holding NUL is refused).
    pub fn property_string(&mut self, name: &str, value: &str) -> Result<(), FdtError> {
        self.property_strings(name, &[value])
    }

    /// A string list (`compatible = "a", "b";`).
    pub fn property_strings(&mut self, name: &str, values: &[&str]) -> Result<(), FdtError> {
        let mut bytes = Vec::new();
        for value in values {
            if value.contains('\0') {
                return Err(FdtError::BadName);
            }
            bytes.extend_from_slice(value.as_bytes());
            bytes.push(0);
        }
        self.property(name, &bytes)
    }

    /// The finished blob.
    pub fn finish(mut self) -> Result<Vec<u8>, FdtError> {
        if !self.open.is_empty() || !self.root_done {
            return Err(FdtError::Unbalanced);
        }
        self.token(FDT_END);
        // Memory reservation block: only its terminating (0, 0) entry.
        let rsvmap = HEADER_BYTES;
        let structure = rsvmap + 16;
        let strings = structure + self.structure.len();
        let total = strings + self.strings.len();
        let word = |n: usize| u32::try_from(n).map_err(|_| FdtError::TooLarge);
        let header = [
            FDT_MAGIC,
            word(total)?,
            word(structure)?,
            word(strings)?,
            word(rsvmap)?,
            17, // version
            16, // last compatible version
            0,  // boot CPU
            word(self.strings.len())?,
            word(self.structure.len())?,
        ];
        let mut blob = Vec::with_capacity(total);
        for w in header {
            blob.extend_from_slice(&w.to_be_bytes());
        }
        blob.extend_from_slice(&[0; 16]);
        blob.extend_from_slice(&self.structure);
        blob.extend_from_slice(&self.strings);
        Ok(blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmconfig::check_blob;

    fn small_tree() -> Vec<u8> {
        let mut w = FdtWriter::new();
        w.begin_node("").unwrap();
        w.property_u32("#address-cells", 1).unwrap();
        w.property_u32("#size-cells", 1).unwrap();
        w.property_strings("compatible", &["a,b", "c"]).unwrap();
        w.begin_node("memory@0").unwrap();
        w.property_string("device_type", "memory").unwrap();
        w.property_cells("reg", &[0, 0x0100_0000]).unwrap();
        w.end_node().unwrap();
        w.begin_node("intc").unwrap();
        w.property_empty("interrupt-controller").unwrap();
        w.property_u32("#address-cells", 0).unwrap();
        w.end_node().unwrap();
        w.end_node().unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn header_and_blocks_are_laid_out_like_dtc() {
        let blob = small_tree();
        let word = |i: usize| u32::from_be_bytes(blob[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(word(0), FDT_MAGIC);
        assert_eq!(word(1) as usize, blob.len());
        assert_eq!((word(5), word(6)), (17, 16));
        assert_eq!(word(4), 40);
        assert_eq!(word(2), 56);
        assert_eq!(word(3), word(2) + word(9));
        assert_eq!(word(3) + word(8), word(1));
        // Strings are stored once: "#address-cells" appears a single time.
        let strings = &blob[word(3) as usize..];
        let count = strings
            .split(|&b| b == 0)
            .filter(|s| *s == b"#address-cells")
            .count();
        assert_eq!(count, 1);
        assert_eq!(check_blob(&blob), Ok(()));
    }

    #[test]
    fn parses_back_with_the_fdt_crate() {
        let blob = small_tree();
        let fdt = fdt::Fdt::new(&blob).unwrap();
        let root = fdt.find_node("/").unwrap();
        let compatible: Vec<&str> = root
            .property("compatible")
            .unwrap()
            .value
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| core::str::from_utf8(s).unwrap())
            .collect();
        assert_eq!(compatible, ["a,b", "c"]);
        let memory = fdt.find_node("/memory@0").unwrap();
        assert_eq!(
            memory.property("reg").unwrap().value,
            [0, 0, 0, 0, 1, 0, 0, 0]
        );
        let intc = fdt.find_node("/intc").unwrap();
        assert!(intc
            .property("interrupt-controller")
            .unwrap()
            .value
            .is_empty());
    }

    #[test]
    fn misuse_is_refused() {
        let mut w = FdtWriter::new();
        assert_eq!(w.property_u32("x", 1), Err(FdtError::MisplacedProperty));
        assert_eq!(w.begin_node("notroot"), Err(FdtError::BadName));
        w.begin_node("").unwrap();
        assert_eq!(w.begin_node(""), Err(FdtError::BadName));
        assert_eq!(w.begin_node("a/b"), Err(FdtError::BadName));
        assert_eq!(w.property("", &[]), Err(FdtError::BadName));
        assert_eq!(w.property_string("s", "a\0b"), Err(FdtError::BadName));
        w.begin_node("child").unwrap();
        w.end_node().unwrap();
        // Properties must come before child nodes.
        assert_eq!(w.property_u32("late", 1), Err(FdtError::MisplacedProperty));
        assert_eq!(w.clone().finish(), Err(FdtError::Unbalanced));
        w.end_node().unwrap();
        assert_eq!(w.end_node(), Err(FdtError::Unbalanced));
        assert_eq!(w.begin_node(""), Err(FdtError::BadName));
        assert!(w.finish().is_ok());
        assert_eq!(FdtWriter::new().finish(), Err(FdtError::Unbalanced));
        let mut deep = FdtWriter::new();
        deep.begin_node("").unwrap();
        for _ in 1..MAX_DEPTH {
            deep.begin_node("n").unwrap();
        }
        assert_eq!(deep.begin_node("n"), Err(FdtError::TooDeep));
    }
}
