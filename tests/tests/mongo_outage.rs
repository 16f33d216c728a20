//! MongoDB dies under a running storaged and comes back: requests fail with a clear
//! "unavailable" meanwhile, work again without restarting storaged, and nothing that was
//! acknowledged is lost. Writers queued behind one that found no server are told so at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::ErrorKind;
use proto::v1::{GetAttrRequest, LookupRequest};
use tests::daemon::{Backend, Storaged, TestUser};
use tests::mongo::MongoServer;
use tests::vault::{TestFile, create_file};

const ROOT: u64 = 1;
const WRITERS: usize = 3;
/// How long the server stays down.
const OUTAGE: Duration = Duration::from_secs(4);
/// How long storaged may take to work again once the server is back.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// What one writer saw: its last acknowledged chunk generation and text, the files it created
/// with an acknowledgement, and how its failures were reported.
#[derive(Default, Debug)]
struct Seen {
    chunk: (u64, Vec<u8>),
    created: Vec<String>,
    failures: Vec<ErrorKind>,
    successes_after_outage: usize,
}

/// Rewrites `file`'s chunk and creates new files until told to stop, recording every
/// acknowledgement and every failure.
async fn writer(
    slot: usize,
    user: TestUser,
    file: Arc<TestFile>,
    seen: Arc<Mutex<Seen>>,
    outage_over: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let mut base = 0;
    // Every attempt seals a new generation: a failed put may have left its chunk file.
    for generation in 1..=100_000u64 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let text = format!("writer {slot} generation {generation} ").repeat(100);
        let name = format!("w{slot}-{generation}");
        let outcome = match generation % 2 {
            0 => file
                .write_single(&user, base, generation, text.as_bytes())
                .await
                .map(|_| None),
            _ => create_file(&user, ROOT, &name).await.map(|_| Some(name)),
        };
        let failure = outcome.as_ref().err().map(|e| e.kind());
        {
            let mut seen = seen.lock().expect("lock");
            match outcome {
                Ok(Some(name)) => seen.created.push(name),
                Ok(None) => {
                    base = generation;
                    seen.chunk = (generation, text.into_bytes());
                }
                Err(_) => seen.failures.extend(failure),
            }
            if failure.is_none() && outage_over.load(Ordering::Relaxed) {
                seen.successes_after_outage += 1;
            }
        }
        if failure == Some(ErrorKind::StaleGeneration) {
            // A put whose reply was lost did land: go on from the stored generation.
            base = file.read_chunk(&user, 0, true).await.map_or(base, |c| c.0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_mongodb_mid_run_fails_requests_cleanly_and_loses_nothing_acknowledged() {
    let server = Arc::new(MongoServer::start(true));
    let daemon = Storaged::start_on(&Backend::Mongo(server.clone()), &[]);
    let storaged_pid = daemon.pid();
    let alice = daemon.user("alice").await;
    let mut files = Vec::new();
    let seen: Vec<Arc<Mutex<Seen>>> = (0..WRITERS).map(|_| Arc::default()).collect();
    let (outage_over, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut writers = Vec::new();
    for (slot, seen) in seen.iter().enumerate() {
        let name = format!("chunked-{slot}");
        let file = Arc::new(create_file(&alice, ROOT, &name).await.expect("create").0);
        files.push(file.clone());
        let task = writer(
            slot,
            alice.clone(),
            file,
            seen.clone(),
            outage_over.clone(),
            stop.clone(),
        );
        writers.push(tokio::spawn(task));
    }
    // Take MongoDB away mid-run: once every writer has had a few calls acknowledged.
    for _ in 0..6000 {
        let acknowledged = |s: &Arc<Mutex<Seen>>| {
            let seen = s.lock().expect("lock");
            seen.created.len() + usize::from(seen.chunk.0 > 0) >= 3
        };
        if seen.iter().all(acknowledged) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.kill();
    tokio::time::sleep(OUTAGE).await;
    let api = alice.connection.api();
    let during = api.clone().get_attr(GetAttrRequest { ino: ROOT }).await;
    let kind = during
        .map(drop)
        .map_err(|s| client::ClientError::from(s).kind());
    assert_eq!(
        kind,
        Err(ErrorKind::Unavailable),
        "a clear status while down"
    );

    server.spawn();
    outage_over.store(true, Ordering::Relaxed);
    let back = Instant::now();
    while seen
        .iter()
        .any(|s| s.lock().expect("lock").successes_after_outage < 3)
    {
        assert!(
            back.elapsed() < RECOVERY_TIMEOUT,
            "storaged did not recover within {RECOVERY_TIMEOUT:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in writers {
        task.await.expect("writer");
    }
    assert_eq!(
        daemon.pid(),
        storaged_pid,
        "the same storaged process throughout"
    );

    for ((slot, file), seen) in files.iter().enumerate().zip(&seen) {
        let seen = std::mem::take(&mut *seen.lock().expect("lock"));
        writer_lost_nothing(&alice, slot, file, &seen).await;
    }
}

/// What writer `slot` saw after the outage: it was told the store was unavailable and of no
/// other failure but stale generations, and its last acknowledged chunk and every file it
/// created with an acknowledgement are there.
async fn writer_lost_nothing(alice: &TestUser, slot: usize, file: &TestFile, seen: &Seen) {
    let api = alice.connection.api();
    assert!(
        seen.failures.contains(&ErrorKind::Unavailable),
        "writer {slot} was told the store is unavailable: {:?}",
        seen.failures
    );
    let unexpected: Vec<_> = seen
        .failures
        .iter()
        .filter(|k| !matches!(k, ErrorKind::Unavailable | ErrorKind::StaleGeneration))
        .collect();
    assert!(unexpected.is_empty(), "writer {slot}: {unexpected:?}");
    eprintln!(
        "writer {slot}: {} files created, chunk at generation {}, failures {:?}",
        seen.created.len(),
        seen.chunk.0,
        seen.failures
    );
    let (generation, text) = &seen.chunk;
    let (stored_generation, stored) = file.read_chunk(alice, 0, true).await.expect("read");
    assert!(
        stored_generation >= *generation,
        "writer {slot} lost a chunk"
    );
    if stored_generation == *generation {
        assert_eq!(&stored, text);
    }
    for name in &seen.created {
        api.clone()
            .lookup(LookupRequest {
                parent: ROOT,
                name: name.as_bytes().to_vec(),
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged file {name} lost: {e}"));
    }
}
