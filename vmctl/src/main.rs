//! `vmctl`: the VM controller's command line. Errors are one line (`--verbose` adds causes)
//! and a non-zero exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use cli::{Cli, Program};
use keystore::PassphraseSource;
use vmctl::{CreateRequest, MoveTimeouts, OwnerKey, Store, VaultRequest, Vmctl, limits};

const PROGRAM: Program = cli::program!(
    "vmctl",
    "Secure VMs through libvirt across hosts, with encrypted data drives"
);

#[derive(Args, Debug)]
struct Global {
    /// The cluster file (hosts, networks, projects; shared with netctl).
    #[arg(
        short,
        long,
        env = "VMCTL_CLUSTER",
        default_value = "/etc/vault/cluster.toml"
    )]
    cluster: PathBuf,
    /// The store: VM and drive records, images, drives, consoles (on storage every host reaches).
    #[arg(long, env = "VMCTL_STORE", default_value = "/var/lib/vmctl")]
    store: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Define a VM (on the host with the most free capacity unless --host names one).
    Create {
        name: String,
        #[arg(long)]
        image: String,
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Memory in MiB.
        #[arg(long, default_value_t = 256)]
        memory: u64,
        #[arg(long)]
        project: String,
        /// The VM network (default: the cluster's only one).
        #[arg(long)]
        network: Option<String>,
        #[arg(long)]
        host: Option<String>,
        /// For an image that mounts the vault: the client config of the vault user, as
        /// `vaultfs login --server https://...` wrote it (no secrets; handed to the guest).
        #[arg(long, requires = "owner")]
        vault: Option<PathBuf>,
        /// The vault user's key file (only its public key is read; `start` needs the file).
        #[arg(long, requires = "vault")]
        owner: Option<PathBuf>,
    },
    /// Start a VM and wait until the guest is up (for the vault image: until it mounted).
    Start {
        name: String,
        #[command(flatten)]
        key: KeyArgs,
        /// Seconds to wait for the guest.
        #[arg(long, default_value_t = limits::START_TIMEOUT_S_DEFAULT)]
        timeout: u64,
    },
    /// Shut a VM down (ACPI), forcing it off after the timeout.
    Stop {
        name: String,
        #[arg(long, default_value_t = limits::STOP_TIMEOUT_S_DEFAULT)]
        timeout: u64,
    },
    /// Force a VM off and remove it (its drives stay).
    Destroy { name: String },
    /// List VMs: host, state, address.
    List,
    /// A VM's state, host, address, drives and uptime.
    Status { name: String },
    /// Print a VM's serial console log.
    Console { name: String },
    /// Move a VM to another host (stop, redefine there, move its port, start if it ran).
    Move {
        name: String,
        #[arg(long)]
        to: String,
        #[command(flatten)]
        key: KeyArgs,
        /// Seconds for the graceful stop before it is forced.
        #[arg(long, default_value_t = limits::STOP_TIMEOUT_S_DEFAULT)]
        stop_timeout: u64,
        /// Seconds to wait for the guest to come up on the new host.
        #[arg(long, default_value_t = limits::START_TIMEOUT_S_DEFAULT)]
        timeout: u64,
    },
    /// Encrypted data drives.
    #[command(subcommand)]
    Drive(DriveCommand),
}

#[derive(Subcommand, Debug)]
enum DriveCommand {
    /// Create an encrypted drive whose key only its owner can open.
    Create {
        name: String,
        /// Size in GiB.
        #[arg(long)]
        size: u64,
        /// The owner's key file (only its public key is read).
        #[arg(long)]
        owner: PathBuf,
    },
    /// Attach a drive to a VM (live if it runs: then the owner's key is needed).
    Attach {
        name: String,
        #[arg(long)]
        to: String,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Detach a drive from its VM (live if it runs).
    Detach { name: String },
    /// List drives.
    List,
    /// Delete a drive no VM has attached.
    Delete { name: String },
}

/// The owner's key file, to open drive keys.
#[derive(Args, Debug)]
struct KeyArgs {
    /// The drives' owner's key file.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Read its passphrase from this file (else $VAULT_PASSPHRASE, else a prompt).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

impl KeyArgs {
    fn owner_key(&self) -> Option<OwnerKey> {
        self.key.clone().map(|key_file| OwnerKey {
            key_file,
            passphrase: PassphraseSource {
                file: self.passphrase_file.clone(),
                ..Default::default()
            },
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::<Global, Command>::parse_for(&PROGRAM);
    let work = run(&cli.global, &cli.command);
    cli.finish(&PROGRAM, work.map(|()| ExitCode::SUCCESS))
}

fn run(global: &Global, command: &Command) -> Result<()> {
    let net = netctl::Netctl::open(&global.cluster)
        .with_context(|| format!("cannot use cluster file {}", global.cluster.display()))?;
    let vmctl = Vmctl::new(net, Store::new(&global.store));
    match command {
        Command::Drive(command) => drive(&vmctl, command),
        command => vm(&vmctl, command),
    }
}

fn vm(vmctl: &Vmctl, command: &Command) -> Result<()> {
    match command {
        Command::Create {
            name,
            image,
            cpus,
            memory,
            project,
            network,
            host,
            vault,
            owner,
        } => {
            let request = CreateRequest {
                name: name.clone(),
                image: image.clone(),
                cpus: *cpus,
                memory_mib: *memory,
                project: project.clone(),
                network: network.clone(),
                host: host.clone(),
                vault: vault
                    .clone()
                    .zip(owner.clone())
                    .map(|(config, owner)| VaultRequest { config, owner }),
            };
            let host = vmctl.create(&request)?;
            let port = vmctl.network().port(name)?;
            println!(
                "created {name} on {host}: address {}/{}",
                port.ip, port.prefix_len
            );
        }
        Command::Start { name, key, timeout } => {
            let started = vmctl.start(
                name,
                key.owner_key().as_ref(),
                Duration::from_secs(*timeout),
            )?;
            print_started(&started);
        }
        Command::Stop { name, timeout } => {
            let graceful = vmctl.stop(name, Duration::from_secs(*timeout))?;
            let how = if graceful {
                "shut down"
            } else {
                "forced off after the timeout"
            };
            println!("{name}: {how}");
        }
        Command::Destroy { name } => {
            vmctl.destroy(name)?;
            println!("destroyed {name}");
        }
        Command::List => print_list(vmctl)?,
        Command::Status { name } => print_status(vmctl, name)?,
        Command::Console { name } => print!("{}", vmctl.console(name)?),
        Command::Move {
            name,
            to,
            key,
            stop_timeout,
            timeout,
        } => {
            let timeouts = MoveTimeouts {
                stop: Duration::from_secs(*stop_timeout),
                start: Duration::from_secs(*timeout),
            };
            let moved = vmctl.move_vm(name, to, key.owner_key().as_ref(), timeouts)?;
            print_moved(name, to, &moved);
        }
        Command::Drive(_) => unreachable!("drive commands are handled by `drive`"),
    }
    Ok(())
}

fn drive(vmctl: &Vmctl, command: &DriveCommand) -> Result<()> {
    match command {
        DriveCommand::Create { name, size, owner } => {
            vmctl.drive_create(name, *size, owner)?;
            println!(
                "created drive {name} ({size} GiB), key wrapped to {}",
                owner.display()
            );
        }
        DriveCommand::Attach { name, to, key } => {
            let target = vmctl.drive_attach(name, to, key.owner_key().as_ref())?;
            println!("attached {name} to {to} as {target}");
        }
        DriveCommand::Detach { name } => {
            let vm = vmctl.drive_detach(name)?;
            println!("detached {name} from {vm}");
        }
        DriveCommand::Delete { name } => {
            vmctl.drive_delete(name)?;
            println!("deleted drive {name}");
        }
        DriveCommand::List => {
            println!(
                "{:<20} {:>6} {:<12} {:<6} OWNER",
                "DRIVE", "GIB", "VM", "DEVICE"
            );
            for drive in vmctl.drives()? {
                println!(
                    "{:<20} {:>6} {:<12} {:<6} {}",
                    drive.name,
                    drive.size_gib,
                    drive.attached_to.as_deref().unwrap_or("-"),
                    drive.target.as_deref().unwrap_or("-"),
                    drive.owner_fingerprint
                );
            }
        }
    }
    Ok(())
}

fn print_moved(name: &str, to: &str, moved: &vmctl::Moved) {
    let Some(started) = &moved.started else {
        println!("moved {name} to {to} (not running)");
        return;
    };
    let how = if moved.shut_down {
        "shut down"
    } else {
        "forced off after the stop timeout"
    };
    println!("{name} on {}: {how}", moved.from);
    print_started(started);
}

fn print_started(started: &vmctl::Started) {
    println!(
        "started {} on {} in {:.1} s{}: address {}",
        started.vm,
        started.host,
        started.elapsed.as_secs_f64(),
        if started.vault { ", vault mounted" } else { "" },
        started.address
    );
}

fn print_list(vmctl: &Vmctl) -> Result<()> {
    println!(
        "{:<16} {:<10} {:<18} {:<12} {:<16} {:>4} {:>7}",
        "NAME", "HOST", "STATE", "PROJECT", "ADDRESS", "CPUS", "MIB"
    );
    for vm in vmctl.list()? {
        println!(
            "{:<16} {:<10} {:<18} {:<12} {:<16} {:>4} {:>7}",
            vm.name, vm.host, vm.state, vm.project, vm.address, vm.cpus, vm.memory_mib
        );
    }
    Ok(())
}

fn print_status(vmctl: &Vmctl, name: &str) -> Result<()> {
    let status = vmctl.status(name)?;
    let vm = &status.summary;
    let drives: Vec<String> = status
        .drives
        .iter()
        .map(|(drive, target)| format!("{drive} ({target})"))
        .collect();
    let uptime = status
        .uptime
        .map_or("-".to_string(), |d| format!("{} s", d.as_secs()));
    let rss = status
        .rss_kib
        .map_or("-".to_string(), |kib| format!("{} MiB", kib / 1024));
    println!("name       {}", vm.name);
    println!("state      {}", vm.state);
    println!("host       {} ({})", vm.host, status.accel);
    println!(
        "address    {} via {} (mac {}, {})",
        vm.address, status.gateway, status.mac, status.interface
    );
    println!("project    {}", vm.project);
    println!("image      {}", status.image);
    println!(
        "size       {} CPUs, {} MiB (host memory in use {rss})",
        vm.cpus, vm.memory_mib
    );
    println!(
        "drives     {}",
        if drives.is_empty() {
            "-".to_string()
        } else {
            drives.join(", ")
        }
    );
    if let Some(vault) = &status.vault {
        println!("vault      {vault}");
    }
    println!("uptime     {uptime}");
    println!("console    {}", status.console.display());
    Ok(())
}

cli::test_command_line!(Global, Command);
