#!/usr/bin/env bash
# Builds the mipsvisor Linux guest kernel: Debian's linux-source-6.1 with the patch series in
# guests/linux/patches/ and the configuration fragment guests/linux/mipsvisor.config, and a
# built-in initramfs of Debian's busybox-static (mipsel) with guests/linux/init as /init.
#
#   tools/build-linux-guest.sh            build, or take from the cache; prints the image path
#   tools/build-linux-guest.sh --cached   print the path only if that build is cached (else exit 1)
#
# The result is cached outside the clone, by a hash of every input (this script, the patches,
# the fragment, /init, the linux-source and cross-compiler package versions and the busybox
# package itself), in ${MIPSVISOR_LINUX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mipsvisor/linux}:
#   <hash>/vmlinux   the guest image (stripped ELF, entry in the guest KSEG0 window)
#   <hash>/config    its kernel configuration; <hash>/md5sums: md5 of /bin/busybox and /init
#                    (the newest 4 results are kept)
#   work/            the unpacked, patched source tree and object tree (kept for quick rebuilds)
#   busybox/         the downloaded busybox-static_*_mipsel.deb (delete it to fetch it again)
#   apt-mipsel/      the private apt state the download uses (no architecture is added to the
#                    machine's dpkg)
# Only the last line of standard output is the path; everything else goes to standard error.
# A full build takes about 12 minutes on 2 cores; a cached run a few seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/deps.sh
. "$ROOT/tools/deps.sh"

MODE=build
case "${1:-}" in
"") ;;
--cached) MODE=cached ;;
-h | --help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
*) echo "build-linux-guest.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
esac

say() { echo "build-linux-guest: $*" >&2; }
die() { say "error: $*"; exit 1; }

GUEST=$ROOT/guests/linux
SOURCE_TARBALL=/usr/src/linux-source-6.1.tar.xz
CROSS=mipsel-linux-gnu-
CACHE=${MIPSVISOR_LINUX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mipsvisor/linux}

mipsvisor_ensure_deps linux || die "the packages above are needed to build the Linux guest"
for tool in "${CROSS}gcc" "${CROSS}strip" make flex bison bc xz patch dpkg-deb apt-get sha256sum flock; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found after installing dependencies"
done
[ -f "$SOURCE_TARBALL" ] || die "$SOURCE_TARBALL missing (package linux-source-6.1)"
[ -f "$GUEST/patches/series" ] || die "$GUEST/patches/series missing"
mapfile -t PATCHES < <(grep -v '^[[:space:]]*\(#\|$\)' "$GUEST/patches/series")
for p in "${PATCHES[@]}"; do
    [ -f "$GUEST/patches/$p" ] || die "patch $p named in the series is missing"
done

mkdir -p "$CACHE/busybox"
# One build at a time per cache (tools/test.sh and qemu-run.sh may both ask).
exec 9>"$CACHE/lock"
flock 9

# busybox-static for mipsel, fetched with apt-get download over a private apt state: the
# machine's own package lists, architectures and dpkg database are not touched.
fetch_busybox() {
    local state=$CACHE/apt-mipsel
    mkdir -p "$state/lists/partial" "$state/archives/partial" "$CACHE/busybox"
    : >"$state/status"
    local apt=(apt-get -q -o "Dir::State=$state" -o "Dir::State::Lists=$state/lists"
               -o "Dir::State::status=$state/status" -o "Dir::Cache=$state"
               -o "Dir::Cache::archives=$state/archives" -o "APT::Architecture=mipsel"
               -o "APT::Architectures::=mipsel" -o "Acquire::Languages=none"
               -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
               -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false")
    # apt's download sandbox user cannot write into root's home; as root, download as root.
    [ "$(id -u)" -eq 0 ] && apt+=(-o "APT::Sandbox::User=root")
    say "fetching busybox-static:mipsel (private apt state in $state)"
    "${apt[@]}" update >&2 || die "apt-get update for mipsel failed (network or sources?)"
    (cd "$CACHE/busybox" && "${apt[@]}" download busybox-static:mipsel >&2) \
        || die "apt-get download busybox-static:mipsel failed"
}
BUSYBOX_DEB=$(find "$CACHE/busybox" -maxdepth 1 -name 'busybox-static_*_mipsel.deb' | sort | tail -n 1)
if [ -z "$BUSYBOX_DEB" ]; then
    [ $MODE = cached ] && exit 1
    fetch_busybox
    BUSYBOX_DEB=$(find "$CACHE/busybox" -maxdepth 1 -name 'busybox-static_*_mipsel.deb' | sort | tail -n 1)
    [ -n "$BUSYBOX_DEB" ] || die "busybox-static:mipsel was not downloaded"
fi

# The cache key: every input of the build.
SOURCE_VERSION=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || echo unknown)
GCC_VERSION=$("${CROSS}gcc" -dumpfullversion)
KEY=$({
    echo "linux-source-6.1 $SOURCE_VERSION"
    echo "${CROSS}gcc $GCC_VERSION"
    sha256sum "${BASH_SOURCE[0]}" "$GUEST/mipsvisor.config" "$GUEST/init" | cut -d' ' -f1
    for p in "${PATCHES[@]}"; do echo "$p $(sha256sum <"$GUEST/patches/$p")"; done
    sha256sum <"$BUSYBOX_DEB"
} | sha256sum | cut -c1-16)
RESULT=$CACHE/$KEY/vmlinux
if [ -f "$RESULT" ]; then
    say "cached: $RESULT"
    echo "$RESULT"
    exit 0
fi
[ $MODE = cached ] && exit 1

say "building (inputs $KEY): about 12 minutes on 2 cores; log in $CACHE/work/build.log"
WORK=$CACHE/work
SRC=$WORK/src
OBJ=$WORK/obj
mkdir -p "$WORK"

# The source tree: unpacked once per linux-source version, then the series is swapped in
# place (old patches reversed, new ones applied), so an edit to a patch rebuilds only what it
# touches.
unpack_source() {
    say "unpacking $SOURCE_TARBALL"
    rm -rf "$SRC" "$OBJ" "$WORK/applied" "$WORK/unpack"
    mkdir -p "$WORK/unpack"
    tar -xf "$SOURCE_TARBALL" -C "$WORK/unpack"
    mv "$WORK/unpack/linux-source-6.1" "$SRC"
    rmdir "$WORK/unpack"
    mkdir -p "$WORK/applied"
    echo "$SOURCE_VERSION" >"$SRC/.mipsvisor-source-version"
}
if [ "$(cat "$SRC/.mipsvisor-source-version" 2>/dev/null)" != "$SOURCE_VERSION" ]; then
    unpack_source
fi
same_series() {
    [ -f "$WORK/applied/series" ] || return 1
    [ "$(cat "$WORK/applied/series")" = "$(printf '%s\n' "${PATCHES[@]}")" ] || return 1
    local p
    for p in "${PATCHES[@]}"; do cmp -s "$WORK/applied/$p" "$GUEST/patches/$p" || return 1; done
}
if ! same_series; then
    if [ -f "$WORK/applied/series" ]; then
        say "reversing the previously applied series"
        mapfile -t OLD < "$WORK/applied/series"
        for ((i = ${#OLD[@]} - 1; i >= 0; i--)); do
            if ! patch -d "$SRC" -p1 -R -s --no-backup-if-mismatch <"$WORK/applied/${OLD[i]}" >&2; then
                say "could not reverse ${OLD[i]}: unpacking afresh"
                unpack_source
                break
            fi
        done
    fi
    rm -rf "$WORK/applied"
    mkdir -p "$WORK/applied"
    for p in "${PATCHES[@]}"; do
        say "applying $p"
        patch -d "$SRC" -p1 -s -N --no-backup-if-mismatch <"$GUEST/patches/$p" >&2 \
            || die "patch $p does not apply to linux-source-6.1 $SOURCE_VERSION"
        cp "$GUEST/patches/$p" "$WORK/applied/$p"
        printf '%s\n' "$p" >>"$WORK/applied/series"
    done
fi

# The initramfs, as a gen_init_cpio list (the kernel build packs it; no root needed for
# the device node).
rm -rf "$WORK/busybox"
dpkg-deb -x "$BUSYBOX_DEB" "$WORK/busybox"
BUSYBOX=$WORK/busybox/bin/busybox
[ -f "$BUSYBOX" ] || die "$BUSYBOX_DEB holds no bin/busybox"
cp "$GUEST/init" "$WORK/init"
{
    for d in /bin /sbin /usr /usr/bin /usr/sbin /dev /proc /sys /tmp /etc /root; do
        echo "dir $d 0755 0 0"
    done
    echo "nod /dev/console 0600 0 0 c 5 1"
    echo "file /bin/busybox $BUSYBOX 0755 0 0"
    echo "file /init $WORK/init 0755 0 0"
    # Applets as links made at build time: running busybox --install in the guest would cost
    # hundreds of system calls, each one an exit to the hypervisor.
    for applet in sh ash cat cmp cp cut date dd df dmesg echo env false free grep gzip gunzip \
        head hostname kill ls md5sum mkdir mount mv ps pwd rm rmdir sed seq setsid sha256sum \
        sleep sort sync tail tee test touch tr true umount uname uniq wc yes awk cttyhack \
        zcat xargs find printf expr od hexdump vi top basename dirname readlink usleep; do
        echo "slink /bin/$applet busybox 0777 0 0"
    done
    for applet in poweroff reboot halt init; do
        echo "slink /sbin/$applet ../bin/busybox 0777 0 0"
    done
} >"$WORK/initramfs.list"

# The configuration: allnoconfig plus the fragment, then every line of the fragment checked.
{
    cat "$GUEST/mipsvisor.config"
    echo "CONFIG_INITRAMFS_SOURCE=\"$WORK/initramfs.list\""
} >"$WORK/fragment.config"
MAKE=(nice make -C "$SRC" O="$OBJ" ARCH=mips CROSS_COMPILE="$CROSS" -j"$(nproc)")
"${MAKE[@]}" KCONFIG_ALLCONFIG="$WORK/fragment.config" allnoconfig >"$WORK/config.log" 2>&1 \
    || { tail -n 20 "$WORK/config.log" >&2; die "allnoconfig failed (see $WORK/config.log)"; }
missing=()
while IFS= read -r line; do
    case "$line" in
    CONFIG_*=*) grep -qxF "$line" "$OBJ/.config" || missing+=("$line") ;;
    "# CONFIG_"*" is not set")
        sym=${line#\# }
        sym=${sym%% *}
        if grep -q "^$sym=" "$OBJ/.config"; then missing+=("$line"); fi
        ;;
    esac
done <"$GUEST/mipsvisor.config"
[ ${#missing[@]} -eq 0 ] || die "the kernel configuration does not hold: ${missing[*]}"

START=$SECONDS
if ! "${MAKE[@]}" vmlinux >"$WORK/build.log" 2>&1; then
    grep -E 'error|Error' "$WORK/build.log" | head -n 20 >&2
    tail -n 10 "$WORK/build.log" >&2
    die "kernel build failed (see $WORK/build.log)"
fi
say "kernel built in $((SECONDS - START)) s"

mkdir -p "$CACHE/$KEY"
"${CROSS}strip" -o "$CACHE/$KEY/vmlinux.tmp" "$OBJ/vmlinux"
cp "$OBJ/.config" "$CACHE/$KEY/config"
# What the guest's /init computes, computed here (tools/test.sh compares the two).
md5sum "$BUSYBOX" | sed 's|  .*|  /bin/busybox|' >"$CACHE/$KEY/md5sums"
md5sum "$WORK/init" | sed 's|  .*|  /init|' >>"$CACHE/$KEY/md5sums"
mv "$CACHE/$KEY/vmlinux.tmp" "$RESULT"
# Keep the newest few results (each about 6 MB); older input sets are rebuilt if asked for.
find "$CACHE" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended -regex '.*/[0-9a-f]{16}' \
    -printf '%T@ %p\n' | sort -rn | tail -n +5 | cut -d' ' -f2- | xargs -r rm -rf
say "built: $RESULT ($(stat -c %s "$RESULT") bytes)"
echo "$RESULT"
