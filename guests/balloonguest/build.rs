//! Links the guest with the shared guest link script.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=../guest.ld");
    println!("cargo:rustc-link-arg-bins=-T{dir}/../guest.ld");
}
