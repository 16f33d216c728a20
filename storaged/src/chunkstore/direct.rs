//! Large chunks past the page cache (`O_DIRECT`): the disk takes a chunk from our buffer, and
//! fills one, without cache pages to fill, copy and reclaim (a client caches what it reads
//! itself). Where the filesystem refuses, the caller reads or writes the usual way.

use std::fs::File;
use std::io;

use bytes::Bytes;
use format::limits::SEALED_CHUNK_BYTES_MAX;

/// A chunk file at least this large that is not in the page cache is read past it
/// (`O_DIRECT`): the disk fills our buffer directly, without cache pages that would be filled,
/// copied once and reclaimed later (a client caches what it reads itself).
pub(super) const UNCACHED_READ_BYTES: u64 = 1 << 20;
/// What `O_DIRECT` needs buffers, offsets and lengths aligned to (the largest logical block
/// size in use).
const DIRECT_ALIGN: usize = 4096;

/// A chunk at least this large is written past the page cache (`O_DIRECT`), all but its last
/// partial block: the disk takes it from our buffer, without cache pages to fill and write
/// back (copying into fresh cache pages was most of storaged's time in a stream of puts).
pub(super) const UNCACHED_WRITE_BYTES: usize = 1 << 20;

thread_local! {
    /// An aligned staging buffer for `O_DIRECT` writes, kept per thread so that its pages stay
    /// mapped from one chunk to the next.
    static STAGING: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes the whole `DIRECT_ALIGN` blocks of `sealed` to the start of a new, empty file past
/// the page cache and returns how many bytes that was; 0 when the filesystem cannot (the
/// caller writes the rest, and everything it gets back, the usual way).
pub(super) fn write_uncached(file: &File, sealed: &[u8]) -> io::Result<usize> {
    let whole = sealed.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    let written = with_direct_io(file, || {
        STAGING.with(|staging| {
            let mut staging = staging.borrow_mut();
            if staging.len() < whole + DIRECT_ALIGN {
                *staging =
                    vec![0u8; SEALED_CHUNK_BYTES_MAX.next_multiple_of(DIRECT_ALIGN) + DIRECT_ALIGN];
            }
            let skip = staging.as_ptr().align_offset(DIRECT_ALIGN);
            let aligned = &mut staging[skip..skip + whole];
            aligned.copy_from_slice(&sealed[..whole]);
            let mut done = 0;
            while done < whole {
                match rustix::io::pwrite(file, &aligned[done..], done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(error) => return Err(error),
                }
            }
            Ok(done)
        })
    })?;
    match written {
        // A short direct write leaves a partial block: start over the usual way.
        Some(Ok(done)) if done % DIRECT_ALIGN == 0 => Ok(done),
        None | Some(Ok(_)) | Some(Err(rustix::io::Errno::INVAL)) => Ok(0),
        Some(Err(error)) => Err(error.into()),
    }
}

/// Runs `io` on `file` with `O_DIRECT` set, and clears it again; `None` when the filesystem
/// does not take the flag.
fn with_direct_io<T>(file: &File, io: impl FnOnce() -> T) -> io::Result<Option<T>> {
    use rustix::fs::OFlags;
    let flags = rustix::fs::fcntl_getfl(file)?;
    if rustix::fs::fcntl_setfl(file, flags | OFlags::DIRECT).is_err() {
        return Ok(None);
    }
    let outcome = io();
    rustix::fs::fcntl_setfl(file, flags)?;
    Ok(Some(outcome))
}

/// Reads a whole chunk file of `len` bytes past the page cache, unless its start is cached
/// (then a buffered read is cheaper) or the filesystem cannot (`None` for both).
pub(super) fn read_uncached(file: &File, len: usize) -> io::Result<Option<Bytes>> {
    use rustix::io::{Errno, ReadWriteFlags};
    let mut probe = [0u8; 1];
    match rustix::io::preadv2(
        file,
        &mut [io::IoSliceMut::new(&mut probe)],
        0,
        ReadWriteFlags::NOWAIT,
    ) {
        Err(Errno::AGAIN) => read_direct(file, len),
        // Cached, or no way to tell.
        _ => Ok(None),
    }
}

/// Reads a whole chunk file of `len` bytes with `O_DIRECT`, cached or not; `None` when the
/// filesystem cannot.
pub(super) fn read_direct(file: &File, len: usize) -> io::Result<Option<Bytes>> {
    use rustix::io::Errno;
    let read = with_direct_io(file, || {
        let rounded = len.next_multiple_of(DIRECT_ALIGN);
        let mut buffer = vec![0u8; rounded + DIRECT_ALIGN];
        let skip = buffer.as_ptr().align_offset(DIRECT_ALIGN);
        let mut got = 0;
        loop {
            let window = &mut buffer[skip + got..skip + rounded];
            if window.is_empty() {
                break;
            }
            match rustix::io::pread(file, window, got as u64) {
                Ok(0) => break,
                // A read that ends off the alignment ended at the end of the file.
                Ok(n) if n % DIRECT_ALIGN != 0 => {
                    got += n;
                    break;
                }
                Ok(n) => got += n,
                Err(Errno::INTR) => {}
                Err(error) => return Err(error),
            }
        }
        Ok((got == len).then(|| Bytes::from(buffer).slice(skip..skip + len)))
    })?;
    match read {
        Some(Ok(sealed)) => Ok(sealed),
        // Refused: read it the usual way (as when it changed under us, which chunk files
        // never do).
        None | Some(Err(Errno::INVAL)) => Ok(None),
        Some(Err(error)) => Err(error.into()),
    }
}
