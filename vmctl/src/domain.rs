//! The libvirt documents vmctl writes, as typed values: a domain, its data drives and NIC, and
//! the ephemeral secret that carries a drive key. Each renders through [`crate::xml`].

use std::path::PathBuf;

use crate::xml::Element;

/// The namespace of vmctl's `<metadata>` element in a domain.
pub const METADATA_NAMESPACE: &str = "https://vault.invalid/vmctl/1";

/// How the guest's CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation (`<domain type='kvm'>`).
    Kvm,
    /// QEMU's translator (`<domain type='qemu'>`), for hosts without usable KVM.
    Tcg,
}

impl Accel {
    fn domain_type(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "qemu",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// A VM as libvirt defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    pub name: String,
    pub uuid: String,
    pub accel: Accel,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Direct kernel boot.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// Where the first serial port writes (truncated at each start).
    pub serial_log: PathBuf,
    pub nic: Option<NicSpec>,
    pub drives: Vec<DriveSpec>,
    /// The virtio-serial channel vmctl hands the vault key through (`crate::vault`), by name:
    /// QEMU listens on a socket in libvirt's private directory for it.
    pub channel: Option<String>,
    pub project: String,
    pub image: String,
}

/// The VM's port on the VM network: a tap with the name and MAC netctl assigned, which OVS
/// picks up (never an OVS virtualport: libvirt would replace the port netctl made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    pub interface: String,
    pub mac: String,
}

/// An encrypted data drive: a LUKS-in-qcow2 file whose passphrase is a libvirt secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    pub path: PathBuf,
    /// The guest device, `vdb` and on.
    pub target: String,
    /// The drive's name, shown to the guest as the disk's serial number.
    pub serial: String,
    pub secret_uuid: String,
}

/// An ephemeral, private secret: libvirt keeps it in memory only and never returns its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    pub uuid: String,
    pub description: String,
}

impl DomainSpec {
    pub fn to_xml(&self) -> String {
        let mut os = Element::new("os")
            .child(
                Element::with_text("type", "hvm")
                    .attr("arch", "x86_64")
                    .attr("machine", "pc"),
            )
            .child(Element::with_text("kernel", self.kernel.display()));
        if let Some(initrd) = &self.initrd {
            os = os.child(Element::with_text("initrd", initrd.display()));
        }
        os = os.child(Element::with_text("cmdline", &self.cmdline));
        let metadata = Element::new("vmctl:vm")
            .attr("xmlns:vmctl", METADATA_NAMESPACE)
            .child(Element::with_text("vmctl:project", &self.project))
            .child(Element::with_text("vmctl:image", &self.image));
        let devices = Element::new("devices")
            .children(self.drives.iter().map(DriveSpec::to_element))
            .child_opt(self.nic.as_ref().map(NicSpec::to_element))
            .child(
                Element::new("serial")
                    .attr("type", "file")
                    .child(
                        Element::new("source")
                            .attr("path", self.serial_log.display())
                            .attr("append", "off"),
                    )
                    .child(Element::new("target").attr("port", 0)),
            )
            .child_opt(self.channel.as_deref().map(channel))
            // Entropy from the host: guests that seal chunks need random nonces at once.
            .child(
                Element::new("rng")
                    .attr("model", "virtio")
                    .child(Element::with_text("backend", "/dev/urandom").attr("model", "random")),
            )
            .child(Element::new("memballoon").attr("model", "none"));
        Element::new("domain")
            .attr("type", self.accel.domain_type())
            .child(Element::with_text("name", &self.name))
            .child(Element::with_text("uuid", &self.uuid))
            .child(Element::new("metadata").child(metadata))
            .child(Element::with_text("memory", self.memory_mib).attr("unit", "MiB"))
            .child(Element::with_text("vcpu", self.vcpus))
            .child(os)
            // QEMU 10 rejects -no-acpi, which libvirt passes without this.
            .child(Element::new("features").child(Element::new("acpi")))
            .child(Element::with_text("on_poweroff", "destroy"))
            .child(Element::with_text("on_crash", "destroy"))
            .child(devices)
            .to_string()
    }
}

/// A virtio-serial channel named `name` whose host side is a socket QEMU listens on (libvirt
/// picks its path in its own directory); vmctl reaches it through libvirt's stream API.
fn channel(name: &str) -> Element {
    Element::new("channel")
        .attr("type", "unix")
        .child(Element::new("source").attr("mode", "bind"))
        .child(
            Element::new("target")
                .attr("type", "virtio")
                .attr("name", name),
        )
}

impl NicSpec {
    fn to_element(&self) -> Element {
        // Checksum and segmentation offloads off: OVS's userspace datapath does not complete
        // them, and TCP to the guest times out otherwise (machine.md).
        let host = Element::new("host")
            .attr("csum", "off")
            .attr("gso", "off")
            .attr("tso4", "off")
            .attr("tso6", "off")
            .attr("ecn", "off")
            .attr("ufo", "off");
        Element::new("interface")
            .attr("type", "ethernet")
            .child(Element::new("target").attr("dev", &self.interface))
            .child(Element::new("mac").attr("address", &self.mac))
            .child(Element::new("model").attr("type", "virtio"))
            .child(Element::new("driver").child(host))
    }
}

impl DriveSpec {
    pub fn to_element(&self) -> Element {
        let encryption = Element::new("encryption").attr("format", "luks").child(
            Element::new("secret")
                .attr("type", "passphrase")
                .attr("uuid", &self.secret_uuid),
        );
        Element::new("disk")
            .attr("type", "file")
            .attr("device", "disk")
            .child(
                Element::new("driver")
                    .attr("name", "qemu")
                    .attr("type", "qcow2"),
            )
            .child(
                Element::new("source")
                    .attr("file", self.path.display())
                    .child(encryption),
            )
            .child(
                Element::new("target")
                    .attr("dev", &self.target)
                    .attr("bus", "virtio"),
            )
            .child(Element::with_text("serial", &self.serial))
    }

    pub fn to_xml(&self) -> String {
        self.to_element().to_string()
    }
}

impl SecretSpec {
    pub fn to_xml(&self) -> String {
        Element::new("secret")
            .attr("ephemeral", "yes")
            .attr("private", "yes")
            .child(Element::with_text("uuid", &self.uuid))
            .child(Element::with_text("description", &self.description))
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DomainSpec {
        DomainSpec {
            name: "vm1".into(),
            uuid: "6f1c1f8e-3b1a-4d62-9d0e-2b8f4f2f0a11".into(),
            accel: Accel::Tcg,
            vcpus: 2,
            memory_mib: 256,
            kernel: "/images/tiny/vmlinuz".into(),
            initrd: Some("/images/tiny/initrd.img".into()),
            cmdline: "console=ttyS0 ip=10.10.0.5::10.10.0.1:255.255.255.0:vm1:eth0:off".into(),
            serial_log: "/store/console/vm1.log".into(),
            nic: Some(NicSpec {
                interface: "vp3".into(),
                mac: "02:00:0a:0a:00:05".into(),
            }),
            drives: vec![DriveSpec {
                path: "/store/drives/data.qcow2".into(),
                target: "vdb".into(),
                serial: "data".into(),
                secret_uuid: "0c4c1a52-7fd6-4b44-8a4b-2fa3a3b0d0c9".into(),
            }],
            channel: Some("org.vault.handoff.0".into()),
            project: "alpha".into(),
            image: "tiny".into(),
        }
    }

    #[test]
    fn domain_holds_what_the_spec_says() {
        let xml = spec().to_xml();
        for expected in [
            "<domain type='qemu'>",
            "<name>vm1</name>",
            "<memory unit='MiB'>256</memory>",
            "<vcpu>2</vcpu>",
            "<acpi/>",
            "<interface type='ethernet'>",
            "<target dev='vp3'/>",
            "<mac address='02:00:0a:0a:00:05'/>",
            "<host csum='off' gso='off' tso4='off' tso6='off' ecn='off' ufo='off'/>",
            "<source file='/store/drives/data.qcow2'>",
            "<encryption format='luks'>",
            "<secret type='passphrase' uuid='0c4c1a52-7fd6-4b44-8a4b-2fa3a3b0d0c9'/>",
            "<target dev='vdb' bus='virtio'/>",
            "<source path='/store/console/vm1.log' append='off'/>",
            "<vmctl:project>alpha</vmctl:project>",
            "<channel type='unix'>",
            "<source mode='bind'/>",
            "<target type='virtio' name='org.vault.handoff.0'/>",
            "<backend model='random'>/dev/urandom</backend>",
        ] {
            assert!(xml.contains(expected), "`{expected}` missing in:\n{xml}");
        }
        assert!(!xml.contains("virtualport"), "{xml}");
    }

    #[test]
    fn kvm_is_chosen_by_the_accelerator() {
        let mut spec = spec();
        spec.accel = Accel::Kvm;
        assert!(spec.to_xml().starts_with("<domain type='kvm'>"));
    }

    #[test]
    fn secrets_are_ephemeral_and_private() {
        let xml = SecretSpec {
            uuid: "0c4c1a52-7fd6-4b44-8a4b-2fa3a3b0d0c9".into(),
            description: "vmctl drive <data>".into(),
        }
        .to_xml();
        assert!(
            xml.starts_with("<secret ephemeral='yes' private='yes'>"),
            "{xml}"
        );
        assert!(xml.contains("<description>vmctl drive &lt;data&gt;</description>"));
    }
}
