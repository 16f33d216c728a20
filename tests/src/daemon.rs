//! A real `storaged` on a temporary data dir, driven over its socket, torn down on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use client::{Connection, Target};
use identity::Identity;
use proto::v1::{ApproveRequest, GetUserRequest, RegisterRequest, get_user_request};

use crate::mongo::{MongoServer, unique_database};

/// How long a daemon may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a test daemon keeps its metadata.
#[derive(Clone, Debug)]
pub enum Backend {
    /// The embedded store in the data dir (the default).
    Sqlite,
    /// A database of its own on a SecantusDB server.
    Mongo(Arc<MongoServer>),
}

impl Backend {
    /// MongoDB on the server this test binary shares.
    pub fn mongo() -> Backend {
        Backend::Mongo(MongoServer::shared())
    }
}

pub struct Storaged {
    pub dir: tempfile::TempDir,
    pub admin: Arc<Identity>,
    /// The `--meta` URL, when the metadata is in MongoDB.
    meta_url: Option<String>,
    /// Keeps the MongoDB server up while the daemon uses it.
    server: Option<Arc<MongoServer>>,
    args: Vec<String>,
    /// The network namespace it runs in, if not this process's.
    netns: Option<String>,
    child: Option<Child>,
    /// The daemon's first stdout line ("storaged ready: ...").
    pub ready_line: String,
}

impl std::fmt::Debug for Storaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storaged({})", self.dir.path().display())
    }
}

/// A registered, approved and logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub identity: std::sync::Arc<Identity>,
    pub connection: Connection,
}

impl Storaged {
    /// Starts a daemon on a new data dir with extra `serve` arguments, on the embedded store.
    pub fn start(args: &[&str]) -> Storaged {
        Storaged::start_on(&Backend::Sqlite, args)
    }

    /// Starts a daemon on a new data dir and `backend` (MongoDB: a new database).
    pub fn start_on(backend: &Backend, args: &[&str]) -> Storaged {
        let (meta_url, server) = match backend {
            Backend::Sqlite => (None, None),
            Backend::Mongo(server) => (
                Some(server.url(&unique_database("storaged"))),
                Some(server.clone()),
            ),
        };
        Storaged::place(
            tempfile::tempdir().expect("temp data dir"),
            Arc::new(Identity::generate()),
            meta_url,
            server,
            args,
            None,
        )
    }

    /// Starts a daemon on the embedded store inside network namespace `netns`, where its TLS
    /// listener (`--listen`) binds; its data dir and socket are on this machine's filesystem.
    pub fn start_in_netns(netns: &str, args: &[&str]) -> Storaged {
        let admin = Arc::new(Identity::generate());
        Storaged::place(
            tempfile::tempdir().expect("temp data dir"),
            admin,
            None,
            None,
            args,
            Some(netns.to_string()),
        )
    }

    /// Another instance of this vault: its own data dir and socket, the same administrator,
    /// metadata store and chunk root (as behind a load balancer). Needs MongoDB.
    pub fn another_instance(&self, args: &[&str]) -> Storaged {
        let meta_url = self
            .meta_url
            .clone()
            .expect("instances share metadata only through MongoDB");
        let chunk_root = self.dir.path().join("chunks").display().to_string();
        let mut args: Vec<&str> = args.to_vec();
        args.extend(["--chunk-root", &chunk_root]);
        Storaged::place(
            tempfile::tempdir().expect("temp data dir"),
            self.admin.clone(),
            Some(meta_url),
            self.server.clone(),
            &args,
            None,
        )
    }

    /// Starts a daemon on the data dir `dir`, which may hold a vault already (a restored one),
    /// with `admin`'s public key and, given a URL, metadata in MongoDB on `server`.
    pub fn start_in(
        dir: tempfile::TempDir,
        admin: Arc<Identity>,
        meta_url: Option<String>,
        server: Option<Arc<MongoServer>>,
        args: &[&str],
    ) -> Storaged {
        Storaged::place(dir, admin, meta_url, server, args, None)
    }

    /// A daemon on `dir`, in the network namespace `netns` if given.
    fn place(
        dir: tempfile::TempDir,
        admin: Arc<Identity>,
        meta_url: Option<String>,
        server: Option<Arc<MongoServer>>,
        args: &[&str],
        netns: Option<String>,
    ) -> Storaged {
        std::fs::write(
            dir.path().join("admin.pub"),
            admin.public().to_admin_key_text(),
        )
        .expect("write admin.pub");
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if let Some(url) = &meta_url {
            args.extend(["--meta".to_string(), url.clone()]);
        }
        let mut daemon = Storaged {
            dir,
            admin,
            meta_url,
            server,
            args,
            netns,
            child: None,
            ready_line: String::new(),
        };
        daemon.spawn();
        daemon
    }

    /// The MongoDB URL of its metadata, if that is where it is.
    pub fn meta_url(&self) -> Option<&str> {
        self.meta_url.as_deref()
    }

    /// `--meta URL` for a command over the same metadata (none for the embedded store, whose
    /// place follows from `--data-dir`).
    pub fn meta_args(&self) -> Vec<String> {
        match &self.meta_url {
            Some(url) => vec!["--meta".into(), url.clone()],
            None => Vec::new(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The current chunk files of file `ino` on this daemon's disk, in index order (see
    /// [`crate::tools::chunk_files`]).
    pub fn chunk_files(&self, ino: format::ids::FileId) -> Vec<PathBuf> {
        crate::tools::chunk_files(&self.data_dir().join("chunks"), ino.0)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("storaged.sock")
    }

    pub fn target(&self) -> Target {
        Target::Unix(self.socket())
    }

    /// Starts the process and waits (bounded) for its ready line.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "storaged already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("storaged.log"))
            .expect("log file");
        let mut command = Command::new(crate::binary("storaged"));
        if let Some(netns) = &self.netns {
            // `ip netns exec` execs the daemon: the child's PID stays the daemon's.
            command = Command::new("ip");
            command
                .args(["netns", "exec", netns])
                .arg(crate::binary("storaged"));
        }
        let mut child = command
            .arg("serve")
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn storaged");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line.starts_with("storaged ready") => self.ready_line = line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(self.dir.path().join("storaged.log"))
                    .unwrap_or_default();
                panic!("storaged did not become ready ({other:?}); its log:\n{log}");
            }
        }
        self.child = Some(child);
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: a clean stop.
    /// Stops the daemon with SIGTERM; it must exit by itself (within 20 s), even with clients
    /// connected.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child pid");
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            for _ in 0..400 {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("storaged did not stop within 20 s of SIGTERM (killed)");
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub async fn admin_connection(&self) -> Connection {
        let connection = Connection::new(&self.target()).expect("connection");
        connection
            .login("admin", &self.admin)
            .await
            .expect("admin login");
        connection
    }

    /// Registers `name` with a fresh identity, approves it as the admin, logs it in.
    pub async fn user(&self, name: &str) -> TestUser {
        let identity = Identity::generate();
        let connection = Connection::new(&self.target()).expect("connection");
        let vault = connection.hello().await.expect("hello").vault_id;
        let public = identity.public();
        let proof = identity.sign(
            proto::domains::REGISTER,
            &proto::register_message(&vault, name, &public.signing, &public.wrapping),
        );
        let uid = connection
            .api()
            .register(RegisterRequest {
                name: name.into(),
                signing_key: public.signing.to_vec(),
                wrapping_key: public.wrapping.to_vec(),
                proof: proof.to_vec(),
            })
            .await
            .expect("register")
            .into_inner()
            .uid;
        let admin = self.admin_connection().await;
        let user = admin
            .api()
            .get_user(GetUserRequest {
                by: Some(get_user_request::By::Name(name.into())),
            })
            .await
            .expect("get user")
            .into_inner();
        let certificate = self.admin.sign(
            proto::domains::USER_CERTIFICATE,
            &proto::certificate_message(&vault, uid, name, &user.signing_key, &user.wrapping_key),
        );
        admin
            .api()
            .approve(ApproveRequest {
                name: name.into(),
                uid,
                certificate: certificate.to_vec(),
            })
            .await
            .expect("approve");
        connection.login(name, &identity).await.expect("login");
        TestUser {
            name: name.into(),
            uid,
            identity: std::sync::Arc::new(identity),
            connection,
        }
    }
}

impl Drop for Storaged {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("storaged.log"));
            let log = log.unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- storaged log (last lines) ---");
            for line in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{line}");
            }
        }
        self.kill();
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for the daemon to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Calls of `op` the daemon answered so far (`outcome`: "ok", "error", or "" for both), from
/// its metrics endpoint at `metrics` (`--metrics-addr`). The garbage collector's passes count
/// as calls of `gc`.
pub fn server_calls(metrics: &str, op: &str, outcome: &str) -> u64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(metrics).expect("metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("response");
    let prefix = format!("vault_requests_total{{op=\"{op}\",outcome=\"{outcome}");
    body.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .expect("a count")
        })
        .sum()
}
