//! `vmctl`: the VM controller. Its commands arrive with its issue (#7).

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "vmctl",
    version,
    about = "Secure VMs through libvirt across hosts"
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
