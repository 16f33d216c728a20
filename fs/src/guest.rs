//! `vaultfs guest-mount`: the vault inside a VM guest that `vmctl` started. The user's unlocked
//! key and the client settings arrive as one hand-off message (docs/format.md section 11) on the
//! virtio-serial port vmctl writes into at start: read into memory, never written to a disk,
//! the port closed once the message is in. Then the vault mounts as `vaultfs mount` mounts it.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use identity::{HANDOFF_BYTES_MAX, HANDOFF_CHANNEL, Handoff, KeyKind};
use zeroize::Zeroizing;

use proto::ErrorKind;

use crate::config::ClientConfig;
use crate::mount::{self, MountSettings};
use crate::shared::Limits;
use crate::status;

/// Where the guest's kernel lists its virtio-serial ports, each with the name the host gave it.
const PORTS_DIR: &str = "/sys/class/virtio-ports";
/// How often the port is looked at again while the host has not connected yet.
const POLL: Duration = Duration::from_millis(100);

#[derive(clap::Args, Debug)]
pub struct GuestMountArgs {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// The port device [default: the virtio-serial port named org.vault.handoff.0].
    #[arg(long)]
    pub channel: Option<PathBuf>,
    /// How long to wait for vmctl's hand-off, seconds.
    #[arg(long, default_value_t = 120)]
    pub handoff_wait_seconds: u64,
    /// How long an operation waits for an unreachable storaged before it fails, seconds.
    #[arg(long, default_value_t = 30)]
    pub server_wait_seconds: u64,
    /// How long the first contact with storaged is tried again while it does not answer (the
    /// guest's network may come up a moment after the mount starts), seconds.
    #[arg(long, default_value_t = 60)]
    pub first_contact_seconds: u64,
}

/// Takes the hand-off, then mounts and serves in the foreground until unmounted or signalled.
/// Prints `mounted ...` on standard output once the mount is live, or `failed REASON` (one
/// line) if it ends in an error: the guest's init reports that line on the serial console,
/// where `vmctl start` reads it.
pub fn run(args: &GuestMountArgs) -> anyhow::Result<()> {
    let outcome = take_and_mount(args);
    if let Err(error) = &outcome {
        println!("failed {}", format!("{error:#}").replace('\n', " "));
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
    outcome
}

fn take_and_mount(args: &GuestMountArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.handoff_wait_seconds);
    let channel = match &args.channel {
        Some(path) => path.clone(),
        None => find_port(deadline)?,
    };
    let Handoff { identity, settings } = receive(&channel, deadline)?;
    let config: ClientConfig =
        toml::from_str(&settings).context("the hand-off's settings are no client config")?;
    check(&config)?;
    tracing::info!(
        user = config.name.as_deref().unwrap_or_default(),
        fingerprint = %identity.public().fingerprint(),
        server = config.server.as_deref().unwrap_or_default(),
        "took the key from the host's hand-off"
    );
    wait_for_server(&config, Duration::from_secs(args.first_contact_seconds))?;
    let settings = MountSettings {
        config,
        config_path: status::runtime_dir().join("client.toml"),
        mountpoint: args.mountpoint.clone(),
        limits: guest_limits(),
        server_wait: Duration::from_secs(args.server_wait_seconds),
        leases: true,
        legacy_keys: false,
    };
    mount::run(settings, identity, |description| {
        println!("mounted {description}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
    })
}

/// The guest mounts only a server it can check: TLS with a pinned certificate, and the vault
/// and administrator key pinned by the user's own `vaultfs login`, so nothing is trusted on
/// first use inside the guest.
fn check(config: &ClientConfig) -> anyhow::Result<()> {
    let server = config.server.as_deref().unwrap_or_default();
    if !server.starts_with("https://") || config.server_fingerprint.is_none() {
        bail!("the hand-off names no https:// server with its certificate fingerprint");
    }
    config.name()?;
    if config.vault.is_none() {
        bail!("the hand-off pins no vault: run `vaultfs login` before handing it over");
    }
    config.admin()?;
    config.target()?;
    Ok(())
}

/// Attempts at first contact, at most (the pauses reach any sensible wait well before).
const FIRST_CONTACT_ATTEMPTS_MAX: u32 = 64;
/// The longest pause between two attempts, and how long one attempt may take.
const FIRST_CONTACT_PAUSE_MAX: Duration = Duration::from_secs(5);

/// After attempt `attempt` (from 1) at first contact failed with `kind`, `elapsed` after the
/// first began: the pause before the next attempt (doubling from half a second up to
/// [`FIRST_CONTACT_PAUSE_MAX`]), or none when it is time to give up: the server answered
/// with a refusal, or the next attempt would start past `limit`.
fn first_contact_retry(
    kind: ErrorKind,
    attempt: u32,
    elapsed: Duration,
    limit: Duration,
) -> Option<Duration> {
    if kind != ErrorKind::Unavailable || attempt >= FIRST_CONTACT_ATTEMPTS_MAX {
        return None;
    }
    let pause = Duration::from_millis(250 << attempt.min(5)).min(FIRST_CONTACT_PAUSE_MAX);
    (elapsed + pause <= limit).then_some(pause)
}

/// Waits until storaged answers at the hand-off's address, trying again (bounded, see
/// [`first_contact_retry`]) while it is unreachable.
fn wait_for_server(config: &ClientConfig, limit: Duration) -> anyhow::Result<()> {
    let target = config.target()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let start = Instant::now();
    for attempt in 1.. {
        let hello = runtime.block_on(async {
            let connection = client::Connection::new(&target)?;
            match tokio::time::timeout(FIRST_CONTACT_PAUSE_MAX, connection.hello()).await {
                Ok(reply) => reply.map(drop),
                Err(_) => Err(client::ClientError::Connect {
                    target: target.to_string(),
                    reason: "no answer in time".into(),
                }),
            }
        });
        let Err(error) = hello else {
            return Ok(());
        };
        let Some(pause) = first_contact_retry(error.kind(), attempt, start.elapsed(), limit) else {
            return Err(error).with_context(|| format!("reaching storaged at {target}"));
        };
        tracing::info!(%error, attempt, "storaged does not answer yet (is the network up?); trying again");
        std::thread::sleep(pause);
    }
    unreachable!("first_contact_retry gives up after {FIRST_CONTACT_ATTEMPTS_MAX} attempts")
}

/// The caches scale with the guest's memory: an eighth for plaintext, a sixteenth for dirty
/// chunks (at least the two chunks a writer needs), never more than a workstation's defaults.
fn guest_limits() -> Limits {
    let info = rustix::system::sysinfo();
    let memory = (info.totalram as usize).saturating_mul(info.mem_unit.max(1) as usize);
    let defaults = Limits::default();
    Limits {
        cache_bytes_max: (memory / 8).clamp(32 << 20, defaults.cache_bytes_max),
        dirty_bytes_max: (memory / 16).clamp(16 << 20, defaults.dirty_bytes_max),
        ..defaults
    }
}

/// The device of the port named [`HANDOFF_CHANNEL`], once the kernel shows it.
fn find_port(deadline: Instant) -> anyhow::Result<PathBuf> {
    loop {
        for entry in std::fs::read_dir(PORTS_DIR).into_iter().flatten().flatten() {
            let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
            if name.trim() == HANDOFF_CHANNEL {
                let device = Path::new("/dev").join(entry.file_name());
                if device.exists() {
                    return Ok(device);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no virtio-serial port named {HANDOFF_CHANNEL} (was the VM started by vmctl?)");
        }
        std::thread::sleep(POLL);
    }
}

/// Reads one hand-off message from the port. A read on a virtio-serial port returns nothing
/// at once while the host has not connected, so it is tried again until the deadline; the
/// reads happen on a thread of their own so that the deadline holds even if one blocks.
fn receive(port: &Path, deadline: Instant) -> anyhow::Result<Handoff> {
    let mut file = File::open(port).with_context(|| format!("opening {}", port.display()))?;
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(read_message(&mut file, deadline));
    });
    let wait = deadline.saturating_duration_since(Instant::now()) + POLL * 2;
    let message = match receiver.recv_timeout(wait) {
        Ok(message) => message?,
        Err(_) => bail!("no hand-off from the host on {}", port.display()),
    };
    Handoff::decode(&message, KeyKind::User).context("the host's hand-off")
}

fn read_message(file: &mut File, deadline: Instant) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut message = Zeroizing::new(vec![0u8; HANDOFF_BYTES_MAX]);
    let mut have = 0;
    let mut want = 12;
    while have < want {
        let read = file
            .read(&mut message[have..want])
            .context("reading the hand-off")?;
        if read == 0 {
            if Instant::now() > deadline {
                bail!("no hand-off from the host in time");
            }
            std::thread::sleep(POLL);
            continue;
        }
        have += read;
        if have >= 12 {
            want = Handoff::message_len(&message[..have]).context("the host's hand-off")?;
        }
    }
    message.truncate(have);
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_contact_is_tried_again_only_while_unreachable_and_within_the_wait() {
        let limit = Duration::from_secs(60);
        let retry = |kind, attempt, elapsed| first_contact_retry(kind, attempt, elapsed, limit);
        assert_eq!(
            retry(ErrorKind::Unavailable, 1, Duration::ZERO),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            retry(ErrorKind::Unavailable, 2, Duration::ZERO),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            retry(ErrorKind::Unavailable, 9, Duration::ZERO),
            Some(FIRST_CONTACT_PAUSE_MAX)
        );
        for refusal in [
            ErrorKind::AccessDenied,
            ErrorKind::Invalid,
            ErrorKind::NotFound,
        ] {
            assert_eq!(retry(refusal, 1, Duration::ZERO), None, "{refusal:?}");
        }
        assert_eq!(
            retry(ErrorKind::Unavailable, 3, Duration::from_secs(59)),
            None
        );
        // Attempts against a server that never answers: a dozen or so, all within the wait.
        let (mut elapsed, mut attempts) = (Duration::ZERO, 1);
        while let Some(pause) = retry(ErrorKind::Unavailable, attempts, elapsed) {
            elapsed += pause;
            attempts += 1;
        }
        assert!(
            elapsed <= limit && elapsed > limit - FIRST_CONTACT_PAUSE_MAX,
            "{elapsed:?}"
        );
        assert!(
            (10..FIRST_CONTACT_ATTEMPTS_MAX).contains(&attempts),
            "{attempts}"
        );
    }
}
