# Toolchain selection shared by tools/build-fw.sh and tools/build-guests.sh (sourced).
#
# mipsvisor_select_toolchain NAME sets the array CARGO to a cargo that can build core with
# -Z build-std for the MIPS target JSONs, exporting what that cargo needs, or prints why
# none was found (prefixed with NAME) and returns 1. Order:
#   1. $MIPSVISOR_CARGO (RUSTC_BOOTSTRAP=1 is exported for it);
#   2. Debian's rustc-web/cargo-web/rust-web-src (rustc 1.96, sysroot /usr holds the library
#      source): /usr/bin goes first on PATH so cargo finds the matching rustc, clippy-driver
#      and rustdoc rather than rustup's shims; RUSTC_BOOTSTRAP=1;
#   3. a rustup nightly with the rust-src component.
# It also checks that ld.lld exists.

# True if the rustc at $1 has the library source that -Z build-std needs.
mipsvisor_has_rust_src() {
    local sysroot
    sysroot=$("$1" --print sysroot 2>/dev/null) || return 1
    [ -f "$sysroot/lib/rustlib/src/rust/library/core/Cargo.toml" ]
}

mipsvisor_select_toolchain() {
    local name=$1
    CARGO=()
    if [ -n "${MIPSVISOR_CARGO:-}" ]; then
        CARGO=("$MIPSVISOR_CARGO")
        export RUSTC_BOOTSTRAP=1
    elif [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] && mipsvisor_has_rust_src /usr/bin/rustc; then
        export PATH=/usr/bin:$PATH RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
        unset RUSTUP_TOOLCHAIN
        CARGO=(/usr/bin/cargo)
    elif command -v rustup >/dev/null 2>&1 && rustup run nightly rustc --version >/dev/null 2>&1 \
        && mipsvisor_has_rust_src "$(rustup which --toolchain nightly rustc)"; then
        CARGO=(rustup run nightly cargo)
    else
        echo "$name: no Rust toolchain with library source (rust-src) found." >&2
        echo "  Debian 12: apt-get install rustc-web cargo-web rust-web-src lld" >&2
        echo "  rustup:    rustup toolchain install nightly --component rust-src" >&2
        return 1
    fi
    if ! command -v ld.lld >/dev/null 2>&1; then
        echo "$name: ld.lld not found (Debian: apt-get install lld)" >&2
        return 1
    fi
}

# The -Z flags of every MIPS build (core, alloc and compiler_builtins from source, with
# compiler_builtins' memcpy & co., since no libc exists).
# shellcheck disable=SC2034 # used by the scripts that source this file
MIPSVISOR_ZFLAGS=(-Z build-std=core,alloc,compiler_builtins
                  -Z build-std-features=compiler-builtins-mem -Z json-target-spec)
