//! A real `vaultfs` mount of a test daemon, in the foreground as a child process, unmounted
//! and stopped on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use identity::{Identity, KdfParams, KeyFile, KeyKind};

use crate::daemon::{Backend, Storaged, TestUser};

const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// Fails, saying what is missing, when this machine cannot mount FUSE filesystems.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "FUSE tests need /dev/fuse (load the fuse module)"
    );
    let fusermount = Command::new("fusermount3").arg("-V").output();
    assert!(
        fusermount.is_ok_and(|o| o.status.success()),
        "FUSE tests need fusermount3: install fuse3 (scripts/setup.sh does)"
    );
    assert!(
        rustix::process::geteuid().is_root(),
        "FUSE tests run as root (they mount)"
    );
}

/// A user's files for the client: key file, passphrase file, client config.
#[derive(Debug)]
pub struct ClientFiles {
    pub dir: tempfile::TempDir,
    pub name: String,
}

/// A new directory with `identity` sealed in the key file `key_file` (cheap Argon2 parameters:
/// it is a test) and its passphrase in the file `passphrase`.
pub fn sealed_key_dir(identity: &Identity, kind: KeyKind, key_file: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("key dir");
    let sealed =
        KeyFile::seal(identity, kind, b"test passphrase", KdfParams::MINIMUM).expect("seal");
    std::fs::write(dir.path().join(key_file), sealed.as_bytes()).expect("key file");
    std::fs::write(dir.path().join("passphrase"), "test passphrase\n").expect("passphrase file");
    dir
}

impl ClientFiles {
    /// Seals a test user's identity into a key file.
    pub fn for_user(user: &TestUser) -> ClientFiles {
        ClientFiles {
            dir: sealed_key_dir(&user.identity, KeyKind::User, "user.vkey"),
            name: user.name.clone(),
        }
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("user.vkey")
    }

    pub fn args(&self, daemon: &Storaged) -> Vec<String> {
        let path = |p: PathBuf| p.display().to_string();
        vec![
            "--server".into(),
            format!("unix:{}", daemon.socket().display()),
            "--name".into(),
            self.name.clone(),
            "--key-file".into(),
            path(self.key_file()),
            "--passphrase-file".into(),
            path(self.dir.path().join("passphrase")),
            "--config".into(),
            path(self.dir.path().join("client.toml")),
            "--admin-fingerprint".into(),
            daemon.admin.public().fingerprint().to_string(),
        ]
    }
}

#[derive(Debug)]
pub struct Mount {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
    args: Vec<String>,
    pub log: PathBuf,
}

impl Mount {
    /// Mounts `user`'s view of `daemon` on a new temporary directory.
    pub fn start(daemon: &Storaged, client: &ClientFiles, extra: &[&str]) -> Mount {
        require_fuse();
        let dir = tempfile::tempdir().expect("mount dir");
        std::fs::create_dir(dir.path().join("mnt")).expect("mount point");
        let log = dir.path().join("vaultfs.log");
        let mut mount = Mount {
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            args: client.args(daemon),
            log,
        };
        mount.spawn();
        mount
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    pub fn join(&self, relative: &str) -> PathBuf {
        self.path().join(relative)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("mounted")
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut child = Command::new(crate::binary("vaultfs"))
            .arg("mount")
            .arg("--foreground")
            .args(&self.args)
            .args(&self.extra)
            .arg(self.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn vaultfs");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        match rx.recv_timeout(MOUNT_TIMEOUT) {
            Ok(line) if line.starts_with("mounted") => self.child = Some(child),
            other => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "vaultfs did not mount ({other:?}, {status:?}); its log:\n{}",
                    self.log_text()
                );
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let path = self.path().display().to_string();
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(path.as_str()))
    }

    /// A clean unmount: SIGTERM, which flushes and unmounts; waits for the process.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, rustix::process::Signal::TERM);
            wait_bounded(&mut child, Duration::from_secs(30));
        }
        self.force_unmount();
    }

    /// Sends `sent` to vaultfs and waits for it to end (at most 30 s, then SIGKILL): how it
    /// ended by itself, if it did. The mount point is cleaned up on drop.
    pub fn end_with(&mut self, sent: rustix::process::Signal) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        signal(&child, sent);
        wait_bounded(&mut child, Duration::from_secs(30))
    }

    /// SIGKILL: a crash of the client.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn remount(&mut self) {
        self.stop();
        self.spawn();
    }

    fn force_unmount(&self) {
        if self.is_mounted() {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(self.path())
                .output();
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let interesting: Vec<&str> = log
                .lines()
                .filter(|l| {
                    !l.trim_start().starts_with("at ")
                        && !l.trim_start().starts_with(|c: char| c.is_ascii_digit())
                })
                .collect();
            eprintln!("--- vaultfs log (last lines, backtraces left out) ---");
            for line in interesting
                .iter()
                .skip(interesting.len().saturating_sub(30))
            {
                eprintln!("{line}");
            }
        }
        self.kill();
        self.force_unmount();
    }
}

pub fn signal(child: &Child, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Waits for `child` to end, at most `limit`, then kills it: how it ended by itself, if it did.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().ok().flatten() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Runs `work` on a thread and fails the test if it takes longer than `limit` (a hung FUSE
/// call must not hang the test run).
pub fn bounded<T: Send + 'static>(
    limit: Duration,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// Waits (bounded, however slow the machine) until `seen` holds.
pub fn until(what: &str, mut seen: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if seen() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{what} never showed");
}

/// A daemon reporting its calls on a metrics port, a user's files (kept for remounts) and a
/// mount with `extra` options.
pub fn metered(backend: &Backend, extra: &[&str]) -> (Storaged, String, ClientFiles, Mount) {
    let metrics = format!("127.0.0.1:{}", crate::daemon::free_port());
    let daemon = Storaged::start_on(backend, &["--metrics-addr", &metrics]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let user = runtime.block_on(daemon.user("alice"));
    let client = ClientFiles::for_user(&user);
    let mount = Mount::start(&daemon, &client, extra);
    (daemon, metrics, client, mount)
}
