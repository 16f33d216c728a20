//! A real MongoDB-wire server for tests: SecantusDB (`scripts/setup.d/60-mongo.sh` installs
//! it into `.venv-mongo` at the workspace root), on a free 127.0.0.1 port and its own storage
//! directory, stopped by PID on drop.
//!
//! Self-contained (std, tempfile and rustix), so that storaged's own tests include this file
//! too.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long a server may take to listen (a cold Python start is about a second).
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct MongoServer {
    port: u16,
    /// The WiredTiger home: removed with the server.
    storage: tempfile::TempDir,
    /// Fsync the log at every commit (for tests that kill the server and count on commits).
    durable: bool,
    child: Mutex<Option<Child>>,
}

/// The server program, or a failure that says how to install it.
pub fn secantusd() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("every crate sits inside the workspace");
    let program = root.join(".venv-mongo/bin/secantusd-py");
    assert!(
        program.is_file(),
        "MongoDB tests need SecantusDB, and {} is missing: run scripts/setup.sh \
         (scripts/setup.d/60-mongo.sh installs secantusdb into .venv-mongo)",
        program.display()
    );
    program
}

impl MongoServer {
    /// The server this test binary shares: started by the first test that needs it, stopped
    /// when the last one holding it ends. Tests keep apart by database name.
    pub fn shared() -> Arc<MongoServer> {
        static SHARED: Mutex<Weak<MongoServer>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(server) = shared.upgrade() {
            return server;
        }
        let server = Arc::new(MongoServer::start(false));
        *shared = Arc::downgrade(&server);
        server
    }

    /// A server of its own; `durable` makes every commit fsync its log, so that a test can
    /// kill the server and still count on what it acknowledged.
    pub fn start(durable: bool) -> MongoServer {
        let server = MongoServer {
            port: free_port(),
            storage: tempfile::tempdir().expect("server storage dir"),
            durable,
            child: Mutex::new(None),
        };
        server.spawn();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `database`; calls fail after two seconds without a server.
    pub fn url(&self, database: &str) -> String {
        format!(
            "mongodb://127.0.0.1:{}/{database}?serverSelectionTimeoutMS=2000",
            self.port
        )
    }

    /// (Re)starts the process on the same port and storage, and waits until it listens.
    pub fn spawn(&self) {
        let mut slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
        assert!(slot.is_none(), "SecantusDB is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("server log");
        let mut command = Command::new(secantusd());
        command
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--storage-path")
            .arg(self.storage.path().join("data"))
            .args(["--log-level", "WARNING"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if self.durable {
            command.arg("--sync-on-commit");
        }
        let mut child = command.spawn().expect("start SecantusDB");
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("SecantusDB exited ({status}); its log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "SecantusDB did not listen within {LISTEN_TIMEOUT:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        *slot = Some(child);
    }

    /// SIGKILL: the server dies mid-run, as in a crash.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, a bounded wait, then SIGKILL.
    pub fn stop(&self) {
        let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn log_path(&self) -> PathBuf {
        self.storage.path().join("secantusd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        // Its storage goes with the temp dir, so a clean shutdown would be wasted time.
        self.kill();
    }
}

/// A database name no other test uses.
pub fn unique_database(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tag: String = tag
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(24)
        .collect();
    format!(
        "t_{tag}_{}_{}_{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}
