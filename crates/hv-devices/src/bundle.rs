//! A bundle: one VM layout plus the guest images it names, packed as a U-Boot FIT image.
//!
//! FIT is a flattened device tree whose `/images` node holds one child per payload, each with
//! a `data` property (the bytes) and a `type` (`flat_dt` for a device tree, `kernel`,
//! `firmware`, ... for the rest). Boot loaders already load FIT files, so a board loads a
//! bundle the way QEMU does with `-initrd`: the firmware finds it where the initrd would be.
//!
//! A bundle holds exactly one `flat_dt` image, the VM layout (parsed by
//! [`crate::vmconfig::VmLayout::parse`]), and any number of guest images, named by their node
//! names (a unit address, `@1`, is dropped), which is how the layout's `image = "NAME"`
//! properties refer to them. Payloads must be uncompressed: the firmware has no
//! decompressor, and a `compression` other than `none` is refused rather than run as garbage.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use fdt::Fdt;

/// The first word of every flattened device tree (and so of every FIT image), big-endian.
pub const FDT_MAGIC: [u8; 4] = [0xd0, 0x0d, 0xfe, 0xed];

/// True if `blob` starts like a flattened device tree (a bundle, not an ELF image).
pub fn looks_like_bundle(blob: &[u8]) -> bool {
    blob.starts_with(&FDT_MAGIC)
}

/// A parsed bundle, borrowing the blob it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle<'a> {
    /// The VM layout's device tree blob.
    pub layout: &'a [u8],
    /// The layout image's node name.
    pub layout_name: String,
    /// Guest images: (name, bytes), in the bundle's order.
    pub images: Vec<(String, &'a [u8])>,
}

/// Why a blob is not a usable bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleError {
    /// Not a flattened device tree, or a truncated one.
    NotADeviceTree,
    /// The tree has no `/images` node: a device tree, but not a FIT image.
    NoImages,
    /// An image node lacks `data` (or it is empty).
    NoData(String),
    /// An image node lacks `type`, or it is not a string.
    NoType(String),
    /// An image is compressed; the firmware takes only `compression = "none"`.
    Compressed(String, String),
    /// Two images share a name.
    Duplicate(String),
    /// No `flat_dt` image: the bundle has no layout.
    NoLayout,
    /// More than one `flat_dt` image: which layout is meant is unclear.
    SeveralLayouts(String, String),
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotADeviceTree => write!(f, "not a FIT image (no valid device tree header)"),
            Self::NoImages => write!(f, "a device tree without /images: not a FIT image"),
            Self::NoData(name) => write!(f, "/images/{name}: no data"),
            Self::NoType(name) => write!(f, "/images/{name}: no type"),
            Self::Compressed(name, how) => write!(
                f,
                "/images/{name}: compression \"{how}\" is not supported (pack it uncompressed)"
            ),
            Self::Duplicate(name) => write!(f, "two images are called '{name}'"),
            Self::NoLayout => write!(f, "no flat_dt image: the bundle carries no VM layout"),
            Self::SeveralLayouts(a, b) => {
                write!(
                    f,
                    "two flat_dt images ('{a}', '{b}'): one VM layout per bundle"
                )
            }
        }
    }
}

impl<'a> Bundle<'a> {
    /// Reads a FIT image.
    pub fn parse(blob: &'a [u8]) -> Result<Self, BundleError> {
        if !looks_like_bundle(blob) {
            return Err(BundleError::NotADeviceTree);
        }
        let fdt = Fdt::new(blob).map_err(|_| BundleError::NotADeviceTree)?;
        let images = fdt.find_node("/images").ok_or(BundleError::NoImages)?;
        let mut layout: Option<(String, &'a [u8])> = None;
        let mut guests: Vec<(String, &'a [u8])> = Vec::new();
        for node in images.children() {
            let name = String::from(node.name.split('@').next().unwrap_or(node.name));
            let data = node
                .property("data")
                .map(|p| p.value)
                .filter(|d| !d.is_empty())
                .ok_or_else(|| BundleError::NoData(name.clone()))?;
            let kind = node
                .property("type")
                .and_then(|p| p.as_str())
                .ok_or_else(|| BundleError::NoType(name.clone()))?;
            if let Some(how) = node.property("compression").and_then(|p| p.as_str()) {
                if how != "none" {
                    return Err(BundleError::Compressed(name, String::from(how)));
                }
            }
            let taken = layout.as_ref().is_some_and(|(n, _)| *n == name)
                || guests.iter().any(|(n, _)| *n == name);
            if taken {
                return Err(BundleError::Duplicate(name));
            }
            if kind == "flat_dt" {
                if let Some((first, _)) = &layout {
                    return Err(BundleError::SeveralLayouts(first.clone(), name));
                }
                layout = Some((name, data));
            } else {
                guests.push((name, data));
            }
        }
        let (layout_name, layout) = layout.ok_or(BundleError::NoLayout)?;
        Ok(Self {
            layout,
            layout_name,
            images: guests,
        })
    }

    /// The guest image called `name`.
    pub fn image(&self, name: &str) -> Option<&'a [u8]> {
        self.images
            .iter()
            .find(|(image, _)| image == name)
            .map(|(_, bytes)| *bytes)
    }

    /// Names of the guest images.
    pub fn image_names(&self) -> impl Iterator<Item = &str> {
        self.images.iter().map(|(name, _)| name.as_str())
    }
}
