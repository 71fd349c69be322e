//! Build script of the firmware package: hands the link script to the linker and embeds the
//! guest images.
//!
//! Only the MIPS build links with `linker.ld`; a host build of this package (if someone runs
//! `cargo build --workspace`) gets the tiny host stub in `src/main.rs` and no script.
//!
//! Guest images: every `*.elf` in `$MIPSVISOR_GUESTS` (default `<out>/guests`, where
//! tools/build-guests.sh puts them; `<out>` is `$MIPSVISOR_OUT` or `<repo>/out`) is embedded
//! with `include_bytes!` under its file stem, through a generated `guest_images.rs`. VM
//! layouts: every `*.dtb` in `<out>/configs` (tools/build-configs.sh) the same way.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MIPSVISOR_GUESTS");
    println!("cargo:rerun-if-env-changed=MIPSVISOR_OUT");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("mips64") {
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
    }
    let out_dir = std::env::var_os("MIPSVISOR_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(&dir).join("out"));
    let guests = std::env::var_os("MIPSVISOR_GUESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| out_dir.join("guests"));
    let mut code = String::new();
    let images = embed(
        &mut code,
        "EMBEDDED",
        "Guest images embedded at build time: (name, ELF bytes).",
        &guests,
        "elf",
    );
    let configs_dir = out_dir.join("configs");
    let layouts = embed(
        &mut code,
        "CONFIGS",
        "VM layouts embedded at build time: (name, device tree blob).",
        &configs_dir,
        "dtb",
    );
    // A firmware without its layouts or guests would only fail later, at boot, with a
    // less helpful message: refuse to build it.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("mips64") {
        if layouts == 0 {
            panic!(
                "no VM layouts in {}: build with tools/build-fw.sh (it compiles configs/*.dts \
                 with dtc, from the device-tree-compiler package)",
                configs_dir.display()
            );
        }
        if images == 0 {
            panic!(
                "no guest images in {}: build with tools/build-fw.sh (it runs \
                 tools/build-guests.sh first)",
                guests.display()
            );
        }
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("guest_images.rs"), code).expect("OUT_DIR is writable");
}

/// Appends `pub static NAME: &[(&str, &[u8])]` with every `*.EXT` file of `dir`; returns how
/// many files it embedded.
fn embed(code: &mut String, name: &str, doc: &str, dir: &Path, ext: &str) -> usize {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == ext))
        .filter_map(|path| {
            let stem = path.file_stem()?.to_str()?.to_owned();
            Some((stem, path))
        })
        .collect();
    files.sort();
    writeln!(code, "/// {doc}\npub static {name}: &[(&str, &[u8])] = &[").expect("String");
    for (stem, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(
            code,
            "    ({stem:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .expect("writing to a String");
    }
    code.push_str("];\n");
    files.len()
}
