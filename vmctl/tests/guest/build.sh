#!/usr/bin/env bash
# Builds the tiny test guest into DIR: Debian's kernel and a busybox-static initramfs with the
# virtio drivers and tests/guest/init, plus the image.toml vmctl reads. Both packages come from
# Debian with `apt-get download` (run `apt-get update` first). Does nothing if DIR has a guest.
#   usage: build.sh DIR
set -euo pipefail
out=${1:?usage: build.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
[[ -f $out/image.toml ]] && exit 0
for tool in apt-get apt-cache dpkg-deb cpio gzip modinfo; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (run scripts/setup.sh)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
kernel_package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')
[[ -n $kernel_package ]] || { echo "build.sh: no kernel package behind linux-image-amd64" >&2; exit 1; }
apt-get download -q=2 -o APT::Sandbox::User=root "$kernel_package" busybox-static
dpkg-deb -x linux-image-*.deb kernel
dpkg-deb -x busybox-static_*.deb busybox
version=$(ls kernel/lib/modules)
modules=kernel/lib/modules/$version/kernel

root=$work/root
mkdir -p "$root"/{bin,dev,etc,proc,sys,tmp,lib/modules}
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

mkdir -p "$out"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initrd.img.tmp"
cp "kernel/boot/vmlinuz-$version" "$out/vmlinuz.tmp"
cat >"$out/image.toml.tmp" <<TOML
# The tiny test guest: $kernel_package with a busybox-static initramfs (vmctl/tests/guest).
kernel = "vmlinuz"
initrd = "initrd.img"
cmdline = "console=ttyS0 quiet panic=-1"
ready_marker = "vault-guest: ready"
TOML
mv "$out/initrd.img.tmp" "$out/initrd.img"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/image.toml.tmp" "$out/image.toml"
