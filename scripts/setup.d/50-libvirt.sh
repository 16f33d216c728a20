# vmctl: libvirt with QEMU (TCG), from bookworm-backports because the machine's qemu-utils 10
# comes from there and Debian 12's own qemu-system-x86 7.2 conflicts with it (machine.md).
# libvirt-dev builds the `virt` crate. Without systemd, libvirtd runs QEMU as root with no
# security driver; the tests start their own virtlogd and libvirtd.
#
# The tiny test guest is built at test time from Debian packages: a kernel package and
# busybox-static (fetched with `apt-get download` then), cpio to pack its initramfs.

backports=/etc/apt/sources.list.d/debian-backports.sources
if [[ ! -f $backports ]]; then
    # The machine's own Debian entry (same mirror and key), for bookworm-backports.
    awk -v RS= -v ORS='\n\n' '/Suites: bookworm( |$)/' /etc/apt/sources.list.d/debian.sources \
        | sed -E 's/^Suites: .*/Suites: bookworm-backports/' >"$backports"
    grep -q 'Suites: bookworm-backports' "$backports" || {
        echo "setup: cannot derive $backports from debian.sources" >&2
        rm -f "$backports"
        exit 1
    }
    apt_updated=0
fi

apt_install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev \
    qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports \
    qemu-system-data/bookworm-backports seabios/bookworm-backports \
    qemu-utils busybox-static cpio kmod

getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null \
    || useradd --system --gid libvirt-qemu --no-create-home --shell /usr/sbin/nologin libvirt-qemu

qemu_conf=/etc/libvirt/qemu.conf
if ! grep -q '^# vault: vmctl' "$qemu_conf" 2>/dev/null; then
    mkdir -p /etc/libvirt
    cat >>"$qemu_conf" <<'EOF'
# vault: vmctl (no systemd, no security driver: QEMU runs as root; machine.md)
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
EOF
fi
mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/images
