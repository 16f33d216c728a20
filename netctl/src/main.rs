//! `netctl`: the VM network controller. Its commands arrive with its issue (#6).

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "netctl",
    version,
    about = "One VM network over Open vSwitch across hosts"
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
