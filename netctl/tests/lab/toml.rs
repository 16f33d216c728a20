//! Pieces of cluster files for the tests.

use std::path::PathBuf;

use super::Lab;

/// The VM network every test uses.
pub const NETWORK: &str = r#"
[[network]]
name = "research"
cidr = "10.10.0.0/24"
gateway = "10.10.0.1"
tunnel_key = 100
"#;

/// A `[[project]]` entry.
pub fn project(name: &str, services: &[&str]) -> String {
    let services: Vec<String> = services.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "\n[[project]]\nname = \"{name}\"\nservices = [{}]\n",
        services.join(", ")
    )
}

/// A `[[vm]]` entry on the research network.
pub fn vm(name: &str, host: &str, project: &str, address: Option<&str>) -> String {
    let address = address.map_or(String::new(), |a| format!("address = \"{a}\"\n"));
    format!(
        "\n[[vm]]\nname = \"{name}\"\nhost = \"{host}\"\nproject = \"{project}\"\n\
         network = \"research\"\n{address}"
    )
}

/// A `[[service]]` entry on the research network.
pub fn service(name: &str, host: &str, address: &str, port: u16) -> String {
    format!(
        "\n[[service]]\nname = \"{name}\"\nhost = \"{host}\"\nnetwork = \"research\"\n\
         address = \"{address}\"\nport = {port}\n"
    )
}

impl Lab {
    /// The `[[host]]` entries of a cluster file for this lab.
    pub fn hosts_toml(&self) -> String {
        let mut text = String::new();
        for (i, host) in self.hosts.iter().enumerate() {
            text.push_str(&format!(
                "\n[[host]]\nname = \"{}\"\novsdb = \"{}\"\nunderlay_ip = \"{}\"\n\
                 external_bridge = \"br-phy\"\nlibvirt_uri = \"qemu:///system\"\ncpus = 2\n\
                 memory_mib = 4096\n",
                host.name,
                self.db(i),
                host.ip
            ));
        }
        text
    }

    /// Writes a cluster file into the lab's directory (state beside it) and returns its path.
    pub fn write_cluster(&self, body: &str) -> PathBuf {
        self.write_cluster_with("", body)
    }

    /// Writes a cluster file with extra top-level settings (`tunnel = "vxlan"`).
    pub fn write_cluster_with(&self, settings: &str, body: &str) -> PathBuf {
        let path = self.dir.path().join("cluster.toml");
        let text = format!(
            "state = \"state.json\"\nexpose_ports = \"20000-20009\"\n{settings}\n{}{NETWORK}{body}",
            self.hosts_toml()
        );
        std::fs::write(&path, text).expect("write cluster file");
        path
    }
}
