//! Guest images: the ones embedded at build time (build.rs), and one passed by the boot
//! loader as an initrd (`rd_start=`/`rd_size=` on the command line).

include!(concat!(env!("OUT_DIR"), "/guest_images.rs"));

/// The embedded image called `name`.
pub fn embedded(name: &str) -> Option<&'static [u8]> {
    EMBEDDED
        .iter()
        .find(|(image, _)| *image == name)
        .map(|(_, bytes)| *bytes)
}

/// The embedded VM layout (device tree blob) called `name`.
pub fn config(name: &str) -> Option<&'static [u8]> {
    CONFIGS
        .iter()
        .find(|(config, _)| *config == name)
        .map(|(_, bytes)| *bytes)
}

/// Names of the embedded images.
pub fn embedded_names() -> impl Iterator<Item = &'static str> {
    EMBEDDED.iter().map(|(name, _)| *name)
}

/// Names of the embedded VM layouts.
pub fn config_names() -> impl Iterator<Item = &'static str> {
    CONFIGS.iter().map(|(name, _)| *name)
}
