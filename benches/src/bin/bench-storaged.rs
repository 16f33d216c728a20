//! The storage daemon under load, on each metadata backend side by side (the embedded SQLite
//! store and MongoDB on a local SecantusDB server): metadata operations per second with 1 and
//! 16 concurrent clients, and chunk put/get throughput, against the real `storaged` binary on
//! a temp dir. Run with `benches/storaged.sh`; its arguments go to every `storaged serve`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::print_table;
use client::Connection;
use proto::v1::{GetAttrRequest, GetChunkRequest, LookupRequest, MkdirRequest, PutChunkRequest};
use tests::daemon::{Backend, Storaged, TestUser};
use tests::mongo::MongoServer;
use tests::vault::create_file;

const CREATES_PER_RUN: usize = 4000;
const CHUNKS: u64 = 48;
const CLIENTS: [usize; 2] = [1, 16];

/// One backend's figures: operations per second by (operation, clients), chunk MB/s.
struct Figures {
    rates: Vec<(&'static str, usize, f64)>,
    put_megabytes: f64,
    get_megabytes: f64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let extra: Vec<String> = std::env::args().skip(1).collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    // Every commit fsyncs its log, as the SQLite store's does and as a replica set's
    // majority-acknowledged, journaled commits are on disk.
    let mongo = Arc::new(MongoServer::start(true));
    let mut columns = Vec::new();
    for (name, backend) in [
        ("sqlite", Backend::Sqlite),
        ("mongodb", Backend::Mongo(mongo.clone())),
    ] {
        eprintln!("measuring storaged over {name} ...");
        columns.push((name, measure(&backend, &extra).await));
    }
    let mut header = vec!["operation".to_string(), "clients".to_string()];
    for (name, _) in &columns {
        header.push(format!("{name} ops/s"));
        header.push(format!("{name} us/op per client"));
    }
    let mut rows = Vec::new();
    for (i, &(operation, clients, _)) in columns[0].1.rates.iter().enumerate() {
        let mut row = vec![operation.to_string(), clients.to_string()];
        for (_, figures) in &columns {
            let rate = figures.rates[i].2;
            row.push(format!("{rate:.0}"));
            row.push(format!("{:.0}", 1e6 / rate * clients as f64));
        }
        rows.push(row);
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    print_table(&header, &rows);
    println!();
    let mut header = vec!["chunk transfer (8 MiB sealed chunks, one client)".to_string()];
    header.extend(columns.iter().map(|(name, _)| format!("{name} MB/s")));
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let row = |label: &str, pick: fn(&Figures) -> f64| {
        let mut row = vec![label.to_string()];
        row.extend(columns.iter().map(|(_, f)| format!("{:.0}", pick(f))));
        row
    };
    print_table(
        &header,
        &[
            row("put (upload, fsync, no commit)", |f| f.put_megabytes),
            row("get", |f| f.get_megabytes),
        ],
    );
}

async fn measure(backend: &Backend, extra: &[&str]) -> Figures {
    let daemon = Storaged::start_on(backend, extra);
    let user = daemon.user("bench").await;
    let mut rates = Vec::new();
    for clients in CLIENTS {
        let users = connections(&daemon, &user, clients).await;
        let dirs = make_dirs(&users, clients).await;
        let per_client = CREATES_PER_RUN / clients;
        let (creates, inos) = timed(&users, &dirs, per_client, Op::Create).await;
        let (lookups, _) = timed(&users, &dirs, per_client, Op::Lookup).await;
        let getattrs = timed_getattr(&users, &inos).await;
        rates.push(("create", clients, creates));
        rates.push(("lookup", clients, lookups));
        rates.push(("getattr", clients, getattrs));
    }
    let (put_megabytes, get_megabytes) = chunk_throughput(&user).await;
    Figures {
        rates,
        put_megabytes,
        get_megabytes,
    }
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
                lazy: false,
                parent: 1,
                name: name.into_bytes(),
                perm: 0o755,
                uid: 1,
                gid: 1,
                ..Default::default()
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

async fn timed_getattr(users: &[TestUser], inos: &[Vec<u64>]) -> f64 {
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
    count as f64 / started.elapsed().as_secs_f64()
}

/// Puts then gets `CHUNKS` full 8 MiB chunks of one file (sealed beforehand, so only the
/// transfer and storage are timed); returns (put, get) in MB/s.
async fn chunk_throughput(user: &TestUser) -> (f64, f64) {
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
    // Uploaded but uncommitted chunks are not readable; commit them all first, untimed.
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
            lazy: false,
            ino: file.ino,
            chunks: commits,
            size: CHUNKS * format::limits::CHUNK_BYTES as u64,
            truncate: false,
            rekey: vec![],
            set_attr: None,
            manifest: Default::default(),
        })
        .await
        .expect("commit");
    let started = Instant::now();
    for index in 0..CHUNKS {
        user.connection
            .api()
            .get_chunk(GetChunkRequest {
                ino: file.ino,
                index,
                descriptor: false,
            })
            .await
            .expect("get");
    }
    let get = started.elapsed();
    let rate = |time: Duration| bytes / time.as_secs_f64() / 1e6;
    (rate(put), rate(get))
}
