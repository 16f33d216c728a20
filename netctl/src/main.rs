//! `netctl`: the VM network controller's command line.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use cli::{Cli, Program};
use netctl::{Cluster, Netctl, PortRequest, StateStore};

const PROGRAM: Program = cli::program!(
    "netctl",
    "One VM network over Open vSwitch across hosts: address assignment, tunnels, \
            isolation flows, port forwards and VM moves, from a declarative cluster file"
);

#[derive(Args, Debug)]
struct Global {
    /// The cluster file (TOML).
    #[arg(
        long,
        short = 'c',
        env = "NETCTL_CLUSTER",
        default_value = "/etc/vault/cluster.toml"
    )]
    cluster: PathBuf,
    /// The state store, instead of the one the cluster file names.
    #[arg(long, env = "NETCTL_STATE")]
    state: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check the cluster file and print a summary.
    Check,
    /// Print, per host, what apply would change.
    Plan,
    /// Make every host match the cluster file and the allocations.
    Apply,
    /// Show per host: bridges, tunnels and their state, ports, flow counts, drift.
    Status,
    /// Publish a VM's TCP port on a host port from the pool, and apply.
    Expose {
        vm: String,
        #[arg(long)]
        port: u16,
    },
    /// Withdraw a published port, and apply.
    Unexpose {
        vm: String,
        #[arg(long)]
        port: u16,
    },
    /// VM ports: add, remove, move, reattach, show, list.
    #[command(subcommand)]
    Vm(VmCommand),
}

#[derive(Subcommand, Debug)]
enum VmCommand {
    /// Give a VM that is not in the cluster file a port, and apply.
    Add {
        vm: String,
        #[arg(long)]
        host: String,
        #[arg(long)]
        project: String,
        #[arg(long)]
        network: String,
        /// A fixed address instead of the lowest free one.
        #[arg(long)]
        address: Option<Ipv4Addr>,
    },
    /// Remove a VM added with `vm add`, and apply.
    Remove { vm: String },
    /// Move a VM's port to another host (MAC, address and exposures stay), and apply.
    Move {
        vm: String,
        #[arg(long)]
        to: String,
    },
    /// Attach a VM's port again to its device, once a VM stopped and started again on the
    /// same host outside vmctl (the device was created anew under the same name).
    Reattach { vm: String },
    /// Print a VM's port: host, MAC, address, gateway, interface name.
    Show { vm: String },
    /// Print every VM port and exposure.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::<Global, Command>::parse_for(&PROGRAM);
    let work = run(&cli.global, &cli.command);
    cli.finish(&PROGRAM, work.map(|()| ExitCode::SUCCESS))
}

fn run(global: &Global, command: &Command) -> Result<()> {
    let cluster = Cluster::load(&global.cluster).map_err(anyhow::Error::new)?;
    let netctl = match &global.state {
        Some(path) => Netctl::with_store(cluster, StateStore::new(path))?,
        None => Netctl::new(cluster)?,
    };
    match command {
        Command::Check => {
            let c = netctl.cluster();
            println!(
                "cluster file OK: {} hosts, {} networks, {} projects, {} services, {} VMs",
                c.hosts.len(),
                c.networks.len(),
                c.projects.len(),
                c.services.len(),
                c.vms.len()
            );
        }
        Command::Plan => {
            let plan = netctl.plan()?;
            print!("{plan}");
            println!("{} changes", plan.change_count());
        }
        Command::Apply => apply(&netctl)?,
        Command::Status => print!("{}", netctl.status()?),
        Command::Expose { vm, port } => {
            let exposure = netctl
                .expose(vm, *port)
                .with_context(|| format!("exposing {vm}:{port}"))?;
            apply(&netctl)?;
            println!("{exposure}");
            println!("{}", exposure.address);
        }
        Command::Unexpose { vm, port } => {
            let exposure = netctl
                .unexpose(vm, *port)
                .with_context(|| format!("unexposing {vm}:{port}"))?;
            apply(&netctl)?;
            println!("withdrawn {exposure}");
        }
        Command::Vm(command) => vm(&netctl, command)?,
    }
    Ok(())
}

fn vm(netctl: &Netctl, command: &VmCommand) -> Result<()> {
    match command {
        VmCommand::Add {
            vm,
            host,
            project,
            network,
            address,
        } => {
            let request = PortRequest {
                vm: vm.clone(),
                host: host.clone(),
                project: project.clone(),
                network: network.clone(),
                address: *address,
            };
            let port = netctl
                .allocate_port(&request)
                .with_context(|| format!("adding vm {vm}"))?;
            apply(netctl)?;
            println!("{port}");
        }
        VmCommand::Remove { vm } => {
            netctl
                .release_port(vm)
                .with_context(|| format!("removing vm {vm}"))?;
            apply(netctl)?;
            println!("removed {vm}");
        }
        VmCommand::Move { vm, to } => {
            let port = netctl
                .move_vm(vm, to)
                .with_context(|| format!("moving vm {vm} to {to}"))?;
            apply(netctl)?;
            println!("{port}");
        }
        VmCommand::Reattach { vm } => {
            let port = netctl
                .reattach(vm)
                .with_context(|| format!("reattaching vm {vm}"))?;
            println!("reattached {port}");
        }
        VmCommand::Show { vm } => println!("{}", netctl.port(vm)?),
        VmCommand::List => {
            for port in netctl.ports()? {
                println!("{port}");
            }
            for exposure in netctl.exposures()? {
                println!("exposure {exposure}");
            }
        }
    }
    Ok(())
}

fn apply(netctl: &Netctl) -> Result<()> {
    let report = netctl.apply().context("applying")?;
    print!("{report}");
    println!("{} changes applied", report.change_count());
    Ok(())
}

cli::test_command_line!(Global, Command);
