//! Build script of the firmware package: hands the link script to the linker.
//!
//! Only the MIPS build links with `linker.ld`; a host build of this package (if someone runs
//! `cargo build --workspace`) gets the tiny host stub in `src/main.rs` and no script.

fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("mips64") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
    }
}
