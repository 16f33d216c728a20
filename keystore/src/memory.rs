//! Keeping secrets out of core dumps and swap (`docs/format.md` section 8).
//!
//! A process that holds unlocked keys or plaintext makes itself non-dumpable first thing
//! ([`forbid_dumps`]): the kernel writes no core dump of it, and neither other users nor root
//! without `CAP_SYS_PTRACE` may read its memory through ptrace or `/proc`; its
//! `coredump_filter` is cleared, so that a dump let through holds no memory. Besides, the pages
//! of long-lived private keys are locked in RAM, never swapped ([`lock_secret`]), and they and
//! large plaintext buffers are marked `MADV_DONTDUMP` ([`exclude_from_dumps`]), so that they
//! stay out of a dump even where the administrator lets non-dumpable processes dump
//! (`fs.suid_dumpable = 2`). Small buffers are not marked: a mark may split a mapping in two,
//! and one per small buffer would run into the kernel's limit on a process's mappings.
#![allow(unsafe_code)] // `madvise` and `mlock` of pages this process owns; see each call.

use std::sync::atomic::{AtomicBool, Ordering};

/// Buffers smaller than this are not marked `MADV_DONTDUMP` (see the module's text).
pub const DONT_DUMP_BYTES_MIN: usize = 1 << 20;

static LOCK_REFUSED: AtomicBool = AtomicBool::new(false);
static MARK_REFUSED: AtomicBool = AtomicBool::new(false);

/// Makes this process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`; an `execve` of another
/// program makes the new one dumpable again), and clears its `coredump_filter`, so that a
/// dump let through anyway holds none of its memory, whatever is marked.
pub fn forbid_dumps() -> std::io::Result<()> {
    use rustix::process::{DumpableBehavior, set_dumpable_behavior};
    set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    std::fs::write("/proc/self/coredump_filter", "0")
}

/// The whole pages covering `len` bytes at `address`: their start and length.
fn pages(address: usize, len: usize) -> (usize, usize) {
    let page = rustix::param::page_size();
    let start = address - address % page;
    let end = (address + len).div_ceil(page) * page;
    (start, end - start)
}

/// Marks the pages of `bytes` `MADV_DONTDUMP` if it has at least [`DONT_DUMP_BYTES_MIN`]
/// bytes. The mark outlives the buffer: pages reused later stay out of dumps too.
pub fn exclude_from_dumps(bytes: &[u8]) {
    if bytes.len() >= DONT_DUMP_BYTES_MIN {
        mark(bytes.as_ptr() as usize, bytes.len());
    }
}

/// [`exclude_from_dumps`] for the whole allocation of `buffer`, what it holds and its spare
/// capacity both: a buffer reserved once and filled afterwards (a chunk being written).
pub fn exclude_allocation_from_dumps(buffer: &Vec<u8>) {
    if buffer.capacity() >= DONT_DUMP_BYTES_MIN {
        mark(buffer.as_ptr() as usize, buffer.capacity());
    }
}

fn mark(address: usize, len: usize) {
    let (start, len) = pages(address, len);
    // SAFETY: the range covers only pages that hold a live value of this process, so they are
    // mapped; MADV_DONTDUMP changes only whether they go into a core dump, never their
    // contents or mapping, so every reference into them stays valid.
    let marked =
        unsafe { rustix::mm::madvise(start as *mut _, len, rustix::mm::Advice::LinuxDontDump) };
    if let Err(error) = marked
        && !MARK_REFUSED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(%error, "could not keep secrets out of core dumps (MADV_DONTDUMP); the process stays non-dumpable");
    }
}

/// Locks the pages holding `value` in RAM (no swap) and keeps them out of core dumps. Where
/// `RLIMIT_MEMLOCK` forbids the lock, says so once and goes on: the process is still
/// non-dumpable. The pages stay locked for the life of the process; use it for key material
/// that lives as long, in one place (behind an `Arc`, say).
pub fn lock_secret<T: ?Sized>(value: &T) {
    let (address, len) = (value as *const T as *const u8 as usize, size_of_val(value));
    mark(address, len);
    let (start, len) = pages(address, len);
    // SAFETY: as in `mark`: the pages hold `value`, so they are mapped; mlock only keeps them
    // resident and changes neither their contents nor their mapping.
    if let Err(error) = unsafe { rustix::mm::mlock(start as *mut _, len) }
        && !LOCK_REFUSED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(%error, "could not lock key material in memory (mlock; raise RLIMIT_MEMLOCK): it may be swapped out");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_the_whole_range_and_nothing_more() {
        let page = rustix::param::page_size();
        assert_eq!(pages(page + 1, 1), (page, page));
        assert_eq!(pages(page - 1, 2), (0, 2 * page));
        assert_eq!(pages(3 * page, page), (3 * page, page));
    }

    /// After `forbid_dumps` the kernel reports this process non-dumpable, and marking and
    /// locking real buffers does not fail.
    #[test]
    fn this_process_becomes_non_dumpable_and_its_secrets_locked() {
        forbid_dumps().expect("prctl");
        let filter = std::fs::read_to_string("/proc/self/coredump_filter").expect("filter");
        assert_eq!(u32::from_str_radix(filter.trim(), 16), Ok(0), "{filter}");
        assert_eq!(
            rustix::process::dumpable_behavior().expect("prctl"),
            rustix::process::DumpableBehavior::NotDumpable
        );
        let big = vec![7u8; 3 * DONT_DUMP_BYTES_MIN];
        exclude_from_dumps(&big);
        let mut reserved: Vec<u8> = Vec::with_capacity(2 * DONT_DUMP_BYTES_MIN);
        exclude_allocation_from_dumps(&reserved);
        reserved.resize(DONT_DUMP_BYTES_MIN, 1);
        let secret = Box::new([9u8; 32]);
        lock_secret(&*secret);
        assert!(!MARK_REFUSED.load(Ordering::Relaxed));
        assert_eq!(big[0] + secret[0], 16, "the buffers are intact");
    }
}
