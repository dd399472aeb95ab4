#!/usr/bin/env bash
# Builds the initramfs that tests/tests/kernel_vm.rs boots under qemu: busybox (static), iproute2
# `ip`, `wg`, `nft`, `conntrack`, the `wgkeep` binary and the shared libraries `ldd` lists for
# them, the kernel modules for WireGuard, veth, nft masquerade/ct and conntrack netlink (decompressed,
# loaded in dependency order), `/init` and `/scenario.sh` (next to this script).
#
# Usage: build-initramfs.sh KERNEL_VERSION WGKEEP_BIN OUT.cpio.gz
#   KERNEL_VERSION  a directory name under /usr/lib/modules (e.g. 6.1.0-56-cloud-amd64)
#   WGKEEP_BIN      the wgkeep binary to put in /usr/bin/wgkeep (debug info is stripped off)
#   OUT.cpio.gz     the archive to write (newc cpio, gzip -1)
#
# Needs (Debian packages): busybox-static, kmod, iproute2, wireguard-tools, nftables, conntrack,
# gzip, and a linux-image package for KERNEL_VERSION; binutils (objcopy) is used when present.
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 KERNEL_VERSION WGKEEP_BIN OUT.cpio.gz" >&2
  exit 2
fi
kver=$1
wgkeep_bin=$2
out=$3
here=$(cd "$(dirname "$0")" && pwd)
moddir=/usr/lib/modules/$kver

# The modules the scenario needs; modprobe adds their dependencies in load order.
modules=(wireguard veth nf_conntrack nf_nat nf_tables nft_chain_nat nft_masq nft_ct
  nfnetlink nf_conntrack_netlink)

die() {
  echo "build-initramfs: $*" >&2
  exit 1
}

[ -d "$moddir" ] || die "no $moddir (is the linux-image package for $kver installed?)"
[ -x "$wgkeep_bin" ] || die "no executable $wgkeep_bin"
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || die "busybox not found (apt-get install busybox-static)"
ldd_out=$(LC_ALL=C ldd "$busybox" 2>&1 || true)
if ! grep -q "not a dynamic executable" <<<"$ldd_out"; then
  die "$busybox is not statically linked (apt-get install busybox-static)"
fi
command -v modprobe >/dev/null || die "modprobe not found (apt-get install kmod)"

declare -A tools=(
  [/usr/sbin/ip]=/usr/sbin/ip
  [/usr/bin/wg]=/usr/bin/wg
  [/usr/sbin/nft]=/usr/sbin/nft
  [/usr/sbin/conntrack]=/usr/sbin/conntrack
  [/usr/bin/setpriv]=/usr/bin/setpriv
)
for dst in "${!tools[@]}"; do
  name=$(basename "$dst")
  src=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v "$name" || true)
  [ -n "$src" ] || die "$name not found (iproute2, wireguard-tools, nftables, conntrack, util-linux)"
  tools[$dst]=$src
done

root=$(mktemp -d "${TMPDIR:-/tmp}/wgkeep-initramfs.XXXXXX")
trap 'rm -rf "$root"' EXIT

mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc,proc,sys,dev,run,tmp,root,mnt,modules}
mkdir -p "$root/var"
ln -s ../run "$root/var/run"

# busybox and its applets (sh, mount, insmod, ping, sysctl, …) in /bin; iproute2's `ip` is called
# by its full path in the scenario (busybox's sh would otherwise prefer its own `ip` applet).
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done

# Binaries and their libraries, at the paths ldd names (so the dynamic loader finds them).
copy_libs() {
  local bin=$1 lib
  for lib in $(ldd "$bin" | grep -o '/[^ ]*' | sort -u); do
    [ -e "$root$lib" ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}
for dst in "${!tools[@]}"; do
  cp -L "${tools[$dst]}" "$root$dst"
  copy_libs "${tools[$dst]}"
done
if command -v objcopy >/dev/null; then
  objcopy --strip-debug "$wgkeep_bin" "$root/usr/bin/wgkeep"
else
  cp -L "$wgkeep_bin" "$root/usr/bin/wgkeep"
fi
chmod 755 "$root/usr/bin/wgkeep"
copy_libs "$wgkeep_bin"

# Kernel modules, decompressed, in the order modprobe would load them.
: >"$root/modules/order"
modprobe -a -S "$kver" --show-depends "${modules[@]}" >"$root/modules.deps" ||
  die "modprobe --show-depends failed for $kver"
while read -r verb path _; do
  [ "$verb" = insmod ] || continue # "builtin NAME" lines need nothing
  name=$(basename "$path")
  case $name in
  *.ko.xz) base=${name%.xz}; xz -dc "$path" >"$root/modules/$base" ;;
  *.ko.zst) base=${name%.zst}; zstd -qdc "$path" >"$root/modules/$base" ;;
  *.ko.gz) base=${name%.gz}; gzip -dc "$path" >"$root/modules/$base" ;;
  *.ko) base=$name; cp "$path" "$root/modules/$base" ;;
  *) die "unexpected module file $path" ;;
  esac
  grep -qx "$base" "$root/modules/order" || echo "$base" >>"$root/modules/order"
done <"$root/modules.deps"
rm "$root/modules.deps"
grep -q '^wireguard\.ko$' "$root/modules/order" || die "no wireguard module for $kver"

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
EOF
printf 'hosts: files\n' >"$root/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n' >"$root/etc/hosts"

cat >"$root/init" <<'EOF'
#!/bin/sh
# PID 1: mount the usual file systems, load the modules, run the scenario, power off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
for m in $(cat /modules/order); do
  insmod "/modules/$m" || echo "WGKEEP-INFO insmod $m failed"
done
echo "WGKEEP-BOOTED kernel $(uname -r) uptime $(cut -d' ' -f1 /proc/uptime)"
sh /scenario.sh
echo "WGKEEP-END rc=$? uptime $(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
EOF
chmod 755 "$root/init"
install -m 755 "$here/scenario.sh" "$root/scenario.sh"

# The kernel opens /dev/console for /init before anything is mounted.
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true

mkdir -p "$(dirname "$out")"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null) |
  gzip -1 >"$out.tmp"
mv "$out.tmp" "$out"
