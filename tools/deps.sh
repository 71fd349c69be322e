# Sourced by qemu-run.sh and tools/test.sh: installs missing build/run dependencies on a
# Debian 12 machine (apt), and only what is missing. Nothing is installed when everything
# is already there.
#
#   mipsvisor_ensure_deps firmware   toolchain + QEMU (qemu-run.sh)
#   mipsvisor_ensure_deps test       the above plus clippy and rustfmt (tools/test.sh)
#   mipsvisor_ensure_deps gdb        gdb-multiarch (qemu-run.sh --gdb)
#   mipsvisor_ensure_deps linux      what tools/build-linux-guest.sh needs (kernel source,
#                                    mipsel cross compiler, kernel build tools)

mipsvisor_has_rust_src() { # $1 = rustc
    local sysroot
    sysroot=$("$1" --print sysroot 2>/dev/null) || return 1
    [ -f "$sysroot/lib/rustlib/src/rust/library/core/Cargo.toml" ]
}

mipsvisor_have_nightly_src() {
    command -v rustup >/dev/null 2>&1 || return 1
    local rustc
    rustc=$(rustup which --toolchain nightly rustc 2>/dev/null) || return 1
    mipsvisor_has_rust_src "$rustc"
}

mipsvisor_ensure_deps() {
    local need=() what
    for what in "$@"; do
        case "$what" in
        firmware | test)
            command -v qemu-system-mips64el >/dev/null 2>&1 || need+=(qemu-system-mips)
            if ! { [ -x /usr/bin/rustc ] && mipsvisor_has_rust_src /usr/bin/rustc; } \
                && ! mipsvisor_have_nightly_src; then
                need+=(rustc-web cargo-web rust-web-src)
            fi
            command -v ld.lld >/dev/null 2>&1 || need+=(lld)
            command -v mips64el-linux-gnuabi64-objcopy >/dev/null 2>&1 \
                || need+=(binutils-mips64el-linux-gnuabi64)
            command -v timeout >/dev/null 2>&1 || need+=(coreutils)
            # VM layouts (configs/*.dts) are compiled by dtc and embedded in the firmware.
            command -v dtc >/dev/null 2>&1 || need+=(device-tree-compiler)
            ;;&
        test)
            # Host checks use whatever cargo is on PATH if it has clippy and rustfmt,
            # otherwise Debian's (which then needs its clippy and rustfmt packages).
            if ! { cargo clippy --version && cargo fmt --version; } >/dev/null 2>&1; then
                [ -x /usr/bin/cargo ] || need+=(cargo-web)
                [ -x /usr/bin/cargo-clippy ] || need+=(rust-web-clippy)
                command -v rustfmt >/dev/null 2>&1 || need+=(rustfmt-web)
            fi
            [ -x /usr/bin/clippy-driver ] || mipsvisor_have_nightly_src || need+=(rust-web-clippy)
            # tools/plot and its PNG check (standard library only).
            command -v python3 >/dev/null 2>&1 || need+=(python3)
            ;;
        gdb)
            command -v gdb-multiarch >/dev/null 2>&1 || need+=(gdb-multiarch)
            ;;
        linux)
            [ -f /usr/src/linux-source-6.1.tar.xz ] || need+=(linux-source-6.1)
            command -v mipsel-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-mipsel-linux-gnu)
            # The kernel's host programs (Kconfig, dtc, gen_init_cpio) and build scripts.
            command -v gcc >/dev/null 2>&1 || need+=(gcc)
            [ -f /usr/include/stdio.h ] || need+=(libc6-dev)
            command -v make >/dev/null 2>&1 || need+=(make)
            command -v flex >/dev/null 2>&1 || need+=(flex)
            command -v bison >/dev/null 2>&1 || need+=(bison)
            command -v bc >/dev/null 2>&1 || need+=(bc)
            command -v xz >/dev/null 2>&1 || need+=(xz-utils)
            command -v patch >/dev/null 2>&1 || need+=(patch)
            command -v flock >/dev/null 2>&1 || need+=(util-linux)
            ;;
        esac
    done
    [ ${#need[@]} -eq 0 ] && return 0
    # De-duplicate while keeping order.
    local unique=() p q seen
    for p in "${need[@]}"; do
        seen=0
        for q in "${unique[@]}"; do [ "$p" = "$q" ] && seen=1; done
        [ $seen -eq 0 ] && unique+=("$p")
    done
    local line="apt-get update && apt-get install -y --no-install-recommends ${unique[*]}"
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "mipsvisor: missing ${unique[*]} and no apt-get to install them (Debian 12 names)" >&2
        return 1
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        # sudo -n: never stop at a password prompt when nobody can answer (CI, a pipe).
        if ! command -v sudo >/dev/null 2>&1 \
            || { [ ! -t 0 ] && ! sudo -n true 2>/dev/null; }; then
            echo "mipsvisor: missing packages; ask an administrator to run, as root:" >&2
            echo "  $line" >&2
            return 1
        fi
        sudo=(sudo)
    fi
    echo "mipsvisor: installing ${unique[*]}" >&2
    if ! { "${sudo[@]}" apt-get update -q >&2 \
        && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${unique[@]}" >&2; }; then
        echo "mipsvisor: installing failed; the command was, as root:" >&2
        echo "  $line" >&2
        return 1
    fi
}
