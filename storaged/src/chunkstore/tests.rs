//! The chunk store's own tests: puts that never replace, and reads that return what was put,
//! through every way of writing and reading a chunk file.

use super::direct::read_direct;
use super::*;
use format::ids::FileId;

/// A chunk of `len` bytes with a header the store reads (its last-chunk flag set).
pub(super) fn sealed(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    bytes[..2].copy_from_slice(b"VC");
    bytes[2] = 1;
    bytes[3] = 1;
    bytes
}

/// Chunk `index` of file `ino` at `generation`.
pub(super) fn chunk(ino: u64, index: u64, generation: u64) -> ChunkRef {
    ChunkRef {
        ino: FileId(ino),
        index: ChunkIndex(index),
        generation: Generation(generation),
    }
}

/// Both ways of making a chunk file: unnamed until written (`O_TMPFILE`), and under a
/// temporary name where that is not available.
#[test]
fn put_never_replaces_and_get_reads_back() {
    for unnamed in [true, false] {
        put_never_replaces_and_get_reads_back_when(unnamed);
    }
}

fn put_never_replaces_and_get_reads_back_when(unnamed: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DirChunkStore::open(dir.path(), false).expect("open");
    store.unnamed_files.store(unnamed, Ordering::Relaxed);
    let chunk = chunk(0xabcd_0000_0000_0001, 2, 5);
    store.put(chunk, &sealed(100)).expect("put");
    assert_eq!(
        store.unnamed_files.load(Ordering::Relaxed),
        unnamed,
        "a temporary directory on ext4 or tmpfs has unnamed files"
    );
    assert!(matches!(
        store.put(chunk, &sealed(90)),
        Err(ChunkStoreError::Exists { .. })
    ));
    assert_eq!(store.get(chunk).expect("get"), sealed(100));
    let (header, len) = store.header(chunk).expect("header");
    assert!(header.last);
    assert_eq!(len, 100);
    assert!(store.path(chunk).ends_with("ab/abcd000000000001.2.5"));
    assert_eq!(store.list().expect("list"), vec![(chunk, 0)]);
    store.delete(chunk).expect("delete");
    store.delete(chunk).expect("deleting twice is fine");
    assert!(matches!(
        store.get(chunk),
        Err(ChunkStoreError::Missing { .. })
    ));
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("ab")).expect("dir").collect();
    assert!(leftovers.is_empty(), "no temporary files stay");
}

#[test]
fn a_large_chunk_is_written_and_read_past_the_cache_and_reads_back_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DirChunkStore::open(dir.path(), false).expect("open");
    let chunk = chunk(0xabcd_0000_0000_0003, 0, 1);
    // Not a multiple of the direct-I/O alignment, and with a pattern that shows shifts.
    let mut data = sealed(2 * 1024 * 1024 + 64 + 5);
    for (i, byte) in data.iter_mut().enumerate().skip(64) {
        *byte = (i % 251) as u8;
    }
    store.put(chunk, &data).expect("put");
    assert!(
        fs::read(store.path(chunk)).expect("read the file") == data,
        "the file holds the chunk, its whole blocks written past the cache and its tail not"
    );
    assert!(store.get(chunk).expect("cached") == data);
    let file = File::open(store.path(chunk)).expect("open");
    // Whether the probe finds the start cached depends on the kernel's eviction, which is
    // best effort; the direct read itself does not.
    let read = read_direct(&file, data.len()).expect("read");
    let read = read.expect("an ext4 temporary directory reads past the cache");
    assert!(read == data, "the uncached read returns the file's bytes");
    if let Some(read) = read_uncached(&file, data.len()).expect("probed read") {
        assert!(
            read == data,
            "a read after the probe returns the file's bytes"
        );
    }
    assert!(store.get(chunk).expect("again") == data);
}
