#!/usr/bin/env bash
# Builds a guest image for vmctl into DIR: Debian's kernel and a busybox-static initramfs with the
# virtio drivers and vmctl/guest/init, plus the image.toml vmctl reads. Packages come from Debian
# with `apt-get download` (run `apt-get update` first).
#   usage: build.sh DIR [--vaultfs BINARY] [--shell-port PORT]
# --vaultfs BINARY  the vault image: adds the fuse and virtio-serial drivers, fusermount3 (Debian's
#                   fuse3), and BINARY (vaultfs, stripped) with the shared libraries it links; the
#                   guest takes its user's key from vmctl at start and mounts the vault on /vault,
#                   and unmounts it when the VM's power button is pressed (then powers off).
# --shell-port PORT for tests only: a root shell for anyone on TCP port PORT. Never in a real image.
set -euo pipefail
usage="usage: build.sh DIR [--vaultfs BINARY] [--shell-port PORT]"
out=${1:?$usage}
shift
vaultfs= shell_port=
while (($#)); do
    case $1 in
        --vaultfs) vaultfs=${2:?$usage}; shift 2 ;;
        --shell-port) shell_port=${2:?$usage}; shift 2 ;;
        *) echo "build.sh: unknown argument $1; $usage" >&2; exit 2 ;;
    esac
done
if [[ -n $vaultfs ]]; then
    [[ -f $vaultfs && -x $vaultfs ]] || { echo "build.sh: $vaultfs is not an executable" >&2; exit 1; }
    vaultfs=$(realpath "$vaultfs")
fi
[[ -z $shell_port || $shell_port =~ ^[0-9]{1,5}$ ]] || { echo "build.sh: bad port $shell_port" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
for tool in apt-get apt-cache dpkg-deb cpio gzip modinfo ldd strip; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (run scripts/setup.sh)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
kernel_package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')
[[ -n $kernel_package ]] || { echo "build.sh: no kernel package behind linux-image-amd64" >&2; exit 1; }
packages=("$kernel_package" busybox-static)
[[ -z $vaultfs ]] || packages+=(fuse3)
apt-get download -q=2 -o APT::Sandbox::User=root "${packages[@]}"
dpkg-deb -x linux-image-*.deb kernel
dpkg-deb -x busybox-static_*.deb busybox
version=$(ls kernel/lib/modules)
modules=kernel/lib/modules/$version/kernel

root=$work/root
mkdir -p "$root"/{bin,dev,etc,proc,run,sys,tmp,lib/modules}
cp busybox/bin/busybox "$root/bin/busybox"
install -m 0755 "$here/init" "$root/init"

# The drivers the guest needs, each after the modules it depends on.
loaded=" "
load() {
    local name=$1 file dep
    [[ $loaded == *" $name "* ]] && return 0
    file=$(find "$modules" -name "$name.ko" | head -n 1)
    [[ -n $file ]] || { echo "build.sh: module $name not in $kernel_package" >&2; exit 1; }
    for dep in $(modinfo -F depends "$file" | tr ',' ' '); do load "$dep"; done
    cp "$file" "$root/lib/modules/$name.ko"
    echo "$name" >>"$root/etc/modules.order"
    loaded+="$name "
}
for module in virtio_pci virtio_blk virtio_net; do load "$module"; done

# Copies a program and the shared libraries it links (as ldd finds them) into the image.
add_program() {
    local program=$1 target=$2 library
    cp "$program" "$root$target"
    for library in $(ldd "$program" | grep -o '/[^ ]*'); do
        mkdir -p "$root$(dirname "$library")"
        cp -L "$library" "$root$library"
    done
}
what="The tiny test guest"
ready_marker="vault-guest: ready"
if [[ -n $vaultfs ]]; then
    for module in fuse virtio_console virtio-rng button evdev; do load "$module"; done
    # The power button (ACPI: `vmctl stop` and `move`) unmounts the vault, so that vaultfs sends
    # what it still holds, and then powers off; busybox acpid runs this file for the button.
    mkdir -p "$root/etc/acpi/PWRF"
    cat >"$root/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "vault-guest: power button: unmounting the vault" >/dev/console
pid=$(cat /run/vaultfs.pid 2>/dev/null)
i=0
while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ $i -lt 600 ]; do
    [ $i -eq 0 ] && kill -TERM "$pid"
    sleep 0.1
    i=$((i + 1))
done
echo "vault-guest: powering off" >/dev/console
poweroff -f
EOF
    chmod 0755 "$root/etc/acpi/PWRF/00000080"
    dpkg-deb -x fuse3_*.deb fuse
    add_program fuse/bin/fusermount3 /bin/fusermount3
    strip -o vaultfs.stripped "$vaultfs"
    add_program vaultfs.stripped /bin/vaultfs
    ln -s /proc/self/mounts "$root/etc/mtab"
    what="The vault guest"
    ready_marker="vault-guest: vault mounted"
fi
[[ -z $shell_port ]] || echo "$shell_port" >"$root/etc/shell-port"

mkdir -p "$out"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initrd.img.tmp"
cp "kernel/boot/vmlinuz-$version" "$out/vmlinuz.tmp"
{
    echo "# $what: $kernel_package with a busybox-static initramfs (vmctl/guest/build.sh)."
    echo 'kernel = "vmlinuz"'
    echo 'initrd = "initrd.img"'
    echo 'cmdline = "console=ttyS0 quiet panic=-1"'
    echo "ready_marker = \"$ready_marker\""
    if [[ -n $vaultfs ]]; then
        echo 'failed_marker = "vault-guest: vault failed"'
        echo 'vault = true'
    fi
} >"$out/image.toml.tmp"
mv "$out/initrd.img.tmp" "$out/initrd.img"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/image.toml.tmp" "$out/image.toml"
