//! The storage daemon under load: metadata operations per second with 1 and 16 concurrent
//! clients, and chunk put/get throughput, against the real `storaged` binary on a temp dir.
//! Run with `benches/storaged.sh`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::print_table;
use client::Connection;
use proto::v1::{GetAttrRequest, GetChunkRequest, LookupRequest, MkdirRequest, PutChunkRequest};
use tests::daemon::{Storaged, TestUser};
use tests::vault::create_file;

const CREATES_PER_RUN: usize = 4000;
const CHUNKS: u64 = 48;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let extra: Vec<String> = std::env::args().skip(1).collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let daemon = Storaged::start(&extra);
    let user = daemon.user("bench").await;
    let mut rows = Vec::new();
    let only_chunks = std::env::var_os("BENCH_ONLY_CHUNKS").is_some();
    for clients in [1usize, 16].into_iter().filter(|_| !only_chunks) {
        let users = connections(&daemon, &user, clients).await;
        let dirs = make_dirs(&users, clients).await;
        let per_client = CREATES_PER_RUN / clients;
        let (creates, inos) = timed(&users, &dirs, per_client, Op::Create).await;
        let (lookups, _) = timed(&users, &dirs, per_client, Op::Lookup).await;
        let (getattrs, _) = timed_getattr(&users, &inos).await;
        for (name, rate) in [
            ("create", creates),
            ("lookup", lookups),
            ("getattr", getattrs),
        ] {
            rows.push(vec![
                name.to_string(),
                clients.to_string(),
                format!("{rate:.0}"),
                format!("{:.0}", 1e6 / rate * clients as f64),
            ]);
        }
    }
    print_table(
        &["operation", "clients", "ops/s", "us per op (per client)"],
        &rows,
    );
    println!();
    chunk_throughput(&user).await;
}

#[derive(Clone, Copy)]
enum Op {
    Create,
    Lookup,
}

async fn connections(daemon: &Storaged, user: &TestUser, count: usize) -> Vec<TestUser> {
    let mut out = Vec::new();
    for _ in 0..count {
        let connection = Connection::new(&daemon.target()).expect("connection");
        connection
            .login(&user.name, &user.identity)
            .await
            .expect("login");
        out.push(TestUser {
            connection,
            ..user.clone()
        });
    }
    out
}

async fn make_dirs(users: &[TestUser], clients: usize) -> Vec<u64> {
    let mut dirs = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let name = format!(
            "c{clients}-{i}-{}",
            identity::random_bytes::<4>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let dir = user
            .connection
            .api()
            .mkdir(MkdirRequest {
                parent: 1,
                name: name.into_bytes(),
                perm: 0o755,
                uid: 1,
                gid: 1,
            })
            .await
            .expect("mkdir")
            .into_inner();
        dirs.push(dir.ino);
    }
    dirs
}

/// Runs `per_client` operations on every client at once; returns operations per second.
async fn timed(
    users: &[TestUser],
    dirs: &[u64],
    per_client: usize,
    op: Op,
) -> (f64, Vec<Vec<u64>>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (user, &dir) in users.iter().zip(dirs) {
        let user = user.clone();
        tasks.push(tokio::spawn(async move {
            let mut inos = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let name = format!("f{i}");
                match op {
                    Op::Create => {
                        inos.push(create_file(&user, dir, &name).await.expect("create").0.ino)
                    }
                    Op::Lookup => {
                        user.connection
                            .api()
                            .lookup(LookupRequest {
                                parent: dir,
                                name: name.into_bytes(),
                            })
                            .await
                            .expect("lookup");
                    }
                }
            }
            inos
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.push(task.await.expect("task"));
    }
    (
        (users.len() * per_client) as f64 / started.elapsed().as_secs_f64(),
        all,
    )
}

async fn timed_getattr(users: &[TestUser], inos: &[Vec<u64>]) -> (f64, ()) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut count = 0;
    for (user, inos) in users.iter().zip(inos) {
        let (user, inos) = (user.clone(), inos.clone());
        count += inos.len();
        tasks.push(tokio::spawn(async move {
            for ino in inos {
                user.connection
                    .api()
                    .get_attr(GetAttrRequest { ino })
                    .await
                    .expect("getattr");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    (count as f64 / started.elapsed().as_secs_f64(), ())
}

/// Puts then gets `CHUNKS` full 8 MiB chunks of one file (sealed beforehand, so only the
/// transfer and storage are timed).
async fn chunk_throughput(user: &TestUser) {
    let (file, _) = create_file(user, 1, "chunks").await.expect("create");
    let plaintext = vec![0x5au8; format::limits::CHUNK_BYTES];
    let sealed: Vec<_> = (0..CHUNKS)
        .map(|i| file.seal(i, 1, i + 1 == CHUNKS, &plaintext))
        .collect();
    let file = Arc::new(file);
    let bytes = (CHUNKS as usize * sealed[0].len()) as f64;
    let started = Instant::now();
    for (index, data) in sealed.into_iter().enumerate() {
        user.connection
            .api()
            .put_chunk(PutChunkRequest {
                ino: file.ino,
                index: index as u64,
                data: data.into(),
                ..Default::default()
            })
            .await
            .expect("put");
    }
    let put = started.elapsed();
    let started = Instant::now();
    for index in 0..CHUNKS {
        // Uploaded but uncommitted chunks are not readable; commit them all first.
        if index == 0 {
            let commits = (0..CHUNKS)
                .map(|i| proto::v1::ChunkCommit {
                    index: i,
                    base_generation: 0,
                    generation: 1,
                })
                .collect();
            user.connection
                .api()
                .commit_chunks(proto::v1::CommitChunksRequest {
                    ino: file.ino,
                    chunks: commits,
                    size: CHUNKS * format::limits::CHUNK_BYTES as u64,
                    truncate: false,
                    rekey: vec![],
                })
                .await
                .expect("commit");
        }
        user.connection
            .api()
            .get_chunk(GetChunkRequest {
                ino: file.ino,
                index,
            })
            .await
            .expect("get");
    }
    let get = started.elapsed();
    let rate = |time: Duration| format!("{:.0}", bytes / time.as_secs_f64() / 1e6);
    print_table(
        &["chunk transfer (8 MiB sealed chunks, one client)", "MB/s"],
        &[
            vec!["put (upload, fsync, no commit)".into(), rate(put)],
            vec!["get".into(), rate(get)],
        ],
    );
}
