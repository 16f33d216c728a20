//! A real `storaged` on a temporary data dir, driven over its socket, torn down on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use client::{Connection, Target};
use identity::Identity;
use proto::v1::{ApproveRequest, GetUserRequest, RegisterRequest, get_user_request};

/// How long a daemon may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Storaged {
    pub dir: tempfile::TempDir,
    pub admin: Identity,
    args: Vec<String>,
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
    /// Starts a daemon on a new data dir with extra `serve` arguments.
    pub fn start(args: &[&str]) -> Storaged {
        let dir = tempfile::tempdir().expect("temp data dir");
        let admin = Identity::generate();
        std::fs::write(
            dir.path().join("admin.pub"),
            storaged::server::admin_key_text(&admin.public()),
        )
        .expect("write admin.pub");
        let mut daemon = Storaged {
            dir,
            admin,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            ready_line: String::new(),
        };
        daemon.spawn();
        daemon
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
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
        let mut child = Command::new(crate::binary("storaged"))
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
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child pid");
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            for _ in 0..100 {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
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
