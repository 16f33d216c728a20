//! Thousands of random writes, reads, truncates, reopens, mode and time changes at random
//! offsets across chunk boundaries on several files, checked against an in-memory model (of
//! the bytes, the mode, and the modification time while no write moved it) after every step, then
//! again after a remount and after dropping the kernel's caches. A failure prints the seed
//! and the shortest operation sequence that still fails.
//!
//! It runs once per metadata backend, the MongoDB run with a shorter sequence.
//! `VAULT_RANDOM_SEED` and `VAULT_RANDOM_OPS` override the seed and the number of operations.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use tests::daemon::{Backend, Storaged};
use tests::mount::{ClientFiles, Mount};

const CHUNK: u64 = 8 * 1024 * 1024;
const FILES: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    Write {
        file: usize,
        offset: u64,
        len: usize,
        fill: u8,
    },
    Read {
        file: usize,
        offset: u64,
        len: usize,
    },
    Truncate {
        file: usize,
        len: u64,
    },
    Reopen {
        file: usize,
    },
    Fsync {
        file: usize,
    },
    Chmod {
        file: usize,
        mode: u32,
    },
    Touch {
        file: usize,
        mtime: i64,
    },
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Offsets cluster around chunk boundaries, where the bugs live.
fn offset(rng: &mut Rng) -> u64 {
    let boundary = rng.below(4) * CHUNK;
    match rng.below(3) {
        0 => boundary.saturating_sub(rng.below(64 * 1024)),
        1 => boundary + rng.below(64 * 1024),
        _ => rng.below(3 * CHUNK),
    }
}

fn length(rng: &mut Rng) -> usize {
    (match rng.below(10) {
        0..=5 => 1 + rng.below(8192),
        6..=8 => 1 + rng.below(256 * 1024),
        _ => 1 + rng.below(12 * 1024 * 1024),
    }) as usize
}

fn generate(seed: u64, count: usize) -> Vec<Op> {
    let mut rng = Rng(seed | 1);
    (0..count)
        .map(|_| {
            let file = rng.below(FILES as u64) as usize;
            match rng.below(22) {
                0..=8 => Op::Write {
                    file,
                    offset: offset(&mut rng),
                    len: length(&mut rng),
                    fill: rng.below(255) as u8 + 1,
                },
                9..=14 => Op::Read {
                    file,
                    offset: offset(&mut rng),
                    len: length(&mut rng),
                },
                15..=16 => Op::Truncate {
                    file,
                    len: offset(&mut rng),
                },
                17..=18 => Op::Reopen { file },
                19 => Op::Fsync { file },
                20 => Op::Chmod {
                    file,
                    mode: 0o600 | rng.below(0o200) as u32,
                },
                _ => Op::Touch {
                    file,
                    mtime: 1_000_000_000 + rng.below(1_000_000) as i64,
                },
            }
        })
        .collect()
}

/// Write data: recognisable per operation, cheap to make in a debug build.
fn data(fill: u8, offset: u64, len: usize) -> Vec<u8> {
    let block: Vec<u8> = (0..251u32)
        .map(|i| (i as u8).wrapping_mul(fill) ^ (offset as u8))
        .collect();
    let mut out = block.repeat(len / block.len() + 1);
    out.truncate(len);
    out
}

struct Run {
    files: Vec<File>,
    model: Vec<Vec<u8>>,
    /// Each file's mode, and its modification time while no write or truncation moved it.
    attrs: Vec<(u32, Option<i64>)>,
    paths: Vec<std::path::PathBuf>,
}

impl Run {
    fn new(dir: &Path, tag: &str) -> Run {
        let paths: Vec<_> = (0..FILES).map(|i| dir.join(format!("{tag}-{i}"))).collect();
        let files: Vec<File> = paths.iter().map(|p| open(p)).collect();
        let attrs = files
            .iter()
            .map(|f| (f.metadata().expect("fstat").mode() & 0o7777, None))
            .collect();
        Run {
            files,
            model: vec![Vec::new(); FILES],
            attrs,
            paths,
        }
    }

    /// Applies one operation; returns what went wrong, if anything.
    fn apply(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Write {
                file,
                offset,
                len,
                fill,
            } => {
                let bytes = data(fill, offset, len);
                self.files[file]
                    .write_all_at(&bytes, offset)
                    .map_err(|e| format!("write: {e}"))?;
                let model = &mut self.model[file];
                let end = offset as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[offset as usize..end].copy_from_slice(&bytes);
                self.attrs[file].1 = None;
                self.check_range(file, offset, len)?;
            }
            Op::Read { file, offset, len } => self.check_range(file, offset, len)?,
            Op::Truncate { file, len } => {
                self.files[file]
                    .set_len(len)
                    .map_err(|e| format!("truncate: {e}"))?;
                self.model[file].resize(len as usize, 0);
                self.attrs[file].1 = None;
                let back = (len.saturating_sub(4096), 8192);
                self.check_range(file, back.0, back.1)?;
            }
            Op::Reopen { file } => {
                self.files[file] = open(&self.paths[file]);
            }
            Op::Fsync { file } => self.files[file]
                .sync_all()
                .map_err(|e| format!("fsync: {e}"))?,
            Op::Chmod { file, mode } => {
                rustix::fs::fchmod(&self.files[file], rustix::fs::Mode::from_raw_mode(mode))
                    .map_err(|e| format!("fchmod: {e}"))?;
                self.attrs[file].0 = mode;
            }
            Op::Touch { file, mtime } => {
                let times = rustix::fs::Timestamps {
                    last_access: rustix::fs::Timespec {
                        tv_sec: 0,
                        tv_nsec: rustix::fs::UTIME_OMIT,
                    },
                    last_modification: rustix::fs::Timespec {
                        tv_sec: mtime,
                        tv_nsec: 0,
                    },
                };
                rustix::fs::futimens(&self.files[file], &times)
                    .map_err(|e| format!("futimens: {e}"))?;
                self.attrs[file].1 = Some(mtime);
            }
        }
        let file = file_of(op);
        let meta = self.files[file]
            .metadata()
            .map_err(|e| format!("fstat: {e}"))?;
        if meta.len() != self.model[file].len() as u64 {
            return Err(format!(
                "size {}, model {}",
                meta.len(),
                self.model[file].len()
            ));
        }
        self.check_attrs(file, &meta)
    }

    fn check_attrs(&self, file: usize, meta: &std::fs::Metadata) -> Result<(), String> {
        let (mode, mtime) = self.attrs[file];
        if meta.mode() & 0o7777 != mode {
            return Err(format!(
                "file {file}: mode {:o}, model {mode:o}",
                meta.mode() & 0o7777
            ));
        }
        if let Some(mtime) = mtime
            && meta.mtime() != mtime
        {
            return Err(format!(
                "file {file}: mtime {}, model {mtime}",
                meta.mtime()
            ));
        }
        Ok(())
    }

    fn check_range(&self, file: usize, offset: u64, len: usize) -> Result<(), String> {
        let model = &self.model[file];
        let start = (offset as usize).min(model.len());
        let end = (offset as usize + len).min(model.len());
        let mut got = vec![0u8; len];
        let mut read = 0;
        while read < len {
            let n = self.files[file]
                .read_at(&mut got[read..], offset + read as u64)
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            read += n;
        }
        if read != end - start || got[..read] != model[start..end] {
            let first = got[..read]
                .iter()
                .zip(&model[start..end])
                .position(|(a, b)| a != b);
            return Err(format!(
                "file {file} bytes {offset}..+{len}: read {read} bytes, model has {}; first difference at {first:?}",
                end - start
            ));
        }
        Ok(())
    }

    fn check_all(&self) -> Result<(), String> {
        for file in 0..FILES {
            let got = std::fs::read(&self.paths[file]).map_err(|e| format!("read {file}: {e}"))?;
            if got != self.model[file] {
                let first = got.iter().zip(&self.model[file]).position(|(a, b)| a != b);
                return Err(format!(
                    "file {file}: {} bytes vs model {}; first difference at {first:?}",
                    got.len(),
                    self.model[file].len()
                ));
            }
            let meta =
                std::fs::metadata(&self.paths[file]).map_err(|e| format!("stat {file}: {e}"))?;
            self.check_attrs(file, &meta)?;
        }
        Ok(())
    }
}

fn file_of(op: &Op) -> usize {
    match *op {
        Op::Write { file, .. }
        | Op::Read { file, .. }
        | Op::Truncate { file, .. }
        | Op::Reopen { file }
        | Op::Fsync { file }
        | Op::Chmod { file, .. }
        | Op::Touch { file, .. } => file,
    }
}

fn open(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .expect("open a test file")
}

/// Replays `ops` on fresh files; the index of the first failing operation.
fn replay(dir: &Path, tag: &str, ops: &[Op]) -> Option<usize> {
    let mut run = Run::new(dir, tag);
    ops.iter().position(|op| run.apply(op).is_err())
}

/// Shortens a failing sequence: first the shortest failing prefix, then single operations
/// dropped while it still fails (bounded in replays and time).
fn shrink(dir: &Path, ops: Vec<Op>) -> Vec<Op> {
    let started = Instant::now();
    let Some(first) = replay(dir, "shrink0", &ops) else {
        return ops;
    };
    let mut ops = ops[..=first].to_vec();
    let mut i = 0;
    for attempt in 1..300 {
        if i >= ops.len() || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        let mut fewer = ops.clone();
        fewer.remove(i);
        match replay(dir, &format!("shrink{attempt}"), &fewer) {
            Some(fail) => ops = fewer[..=fail].to_vec(),
            None => i += 1,
        }
    }
    ops
}

fn random_operations_match_a_model_across_remounts(backend: Backend) {
    let seed = std::env::var("VAULT_RANDOM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from_le_bytes(identity::random_bytes()));
    let count = std::env::var("VAULT_RANDOM_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(match backend {
            Backend::Sqlite => 2000,
            // The long sequence is for the client, which is the same over either store; this
            // one repeats the checks over MongoDB in a fraction of the time.
            Backend::Mongo(_) => 500,
        });
    let daemon = Storaged::start_on(&backend, &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let user = runtime.block_on(daemon.user("alice"));
    let client = ClientFiles::for_user(&user);
    let mut mount = Mount::start(
        &daemon,
        &client,
        &["--dirty-mib", "32", "--cache-mib", "64"],
    );
    let ops = generate(seed, count);

    let mut run = Run::new(&mount.path(), "run");
    for (i, op) in ops.iter().enumerate() {
        if let Err(problem) = run.apply(op) {
            drop(run);
            let shortest = shrink(&mount.path(), ops[..=i].to_vec());
            panic!(
                "seed {seed}: operation {i} ({op:?}) failed: {problem}\nshortest failing sequence ({} ops):\n{shortest:#?}",
                shortest.len()
            );
        }
        if i % 250 == 249 {
            run.check_all()
                .unwrap_or_else(|p| panic!("seed {seed}: after operation {i}: {p}"));
        }
    }
    run.check_all()
        .unwrap_or_else(|p| panic!("seed {seed}: at the end: {p}"));

    // Again after a remount (the client's caches are gone) ...
    let (model, attrs) = (std::mem::take(&mut run.model), run.attrs.clone());
    drop(run);
    mount.remount();
    let mut run = Run::new(&mount.path(), "run");
    (run.model, run.attrs) = (model, attrs);
    run.check_all()
        .unwrap_or_else(|p| panic!("seed {seed}: after remount: {p}"));
    // ... and after dropping the kernel's page cache.
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches (needs root)");
    run.check_all()
        .unwrap_or_else(|p| panic!("seed {seed}: after dropping caches: {p}"));
    eprintln!("seed {seed}: {count} operations matched the model");
}

tests::on_every_backend!(sync: random_operations_match_a_model_across_remounts);
