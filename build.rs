//! Build script of the firmware package: hands the link script to the linker and embeds the
//! guest images.
//!
//! Only the MIPS build links with `linker.ld`; a host build of this package (if someone runs
//! `cargo build --workspace`) gets the tiny host stub in `src/main.rs` and no script.
//!
//! Guest images: every `*.elf` in `$MIPSVISOR_GUESTS` (default `<out>/guests`, where
//! tools/build-guests.sh puts them; `<out>` is `$MIPSVISOR_OUT` or `<repo>/out`) is embedded
//! with `include_bytes!` under its file stem, through a generated `guest_images.rs`.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MIPSVISOR_GUESTS");
    println!("cargo:rerun-if-env-changed=MIPSVISOR_OUT");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("mips64") {
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
    }
    let guests = std::env::var_os("MIPSVISOR_GUESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("MIPSVISOR_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(&dir).join("out"))
                .join("guests")
        });
    println!("cargo:rerun-if-changed={}", guests.display());
    let mut images: Vec<(String, PathBuf)> = std::fs::read_dir(&guests)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "elf"))
        .filter_map(|path| {
            let stem = path.file_stem()?.to_str()?.to_owned();
            Some((stem, path))
        })
        .collect();
    images.sort();
    let mut code = String::from(
        "/// Guest images embedded at build time: (name, ELF bytes).\n\
         pub static EMBEDDED: &[(&str, &[u8])] = &[\n",
    );
    for (name, path) in &images {
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(
            code,
            "    ({name:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .expect("writing to a String");
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("guest_images.rs"), code).expect("OUT_DIR is writable");
}
