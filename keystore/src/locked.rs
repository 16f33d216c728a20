//! Locked memory for 32-byte keys (file keys and their subkeys): slots in arenas of pages
//! mapped for this purpose alone, locked in RAM (never swapped) and marked `MADV_DONTDUMP`
//! once per arena, so that a key costs no system call: taking a slot is a pop from a free
//! list, and giving it back zeroes it and pushes it again. The arenas are bounded
//! ([`LOCKED_KEYS_MAX`] keys, 8 MiB); past that, keys live on the heap, zeroed on drop all the
//! same, covered by the process being non-dumpable (`crate::memory::forbid_dumps`).
#![allow(unsafe_code)] // mapping the arenas and handing out their slots; see each block.

use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use zeroize::{Zeroize, ZeroizeOnDrop};

pub const KEY_BYTES: usize = 32;
/// One arena: 8,192 keys.
const ARENA_BYTES: usize = 256 * 1024;
const SLOTS_PER_ARENA: usize = ARENA_BYTES / KEY_BYTES;
const ARENAS_MAX: usize = 32;
/// Keys that fit in locked memory (the client's key cache holds 65,536 files' keys).
pub const LOCKED_KEYS_MAX: usize = ARENAS_MAX * SLOTS_PER_ARENA;

type Slot = NonNull<[u8; KEY_BYTES]>;

struct Pool {
    free: Vec<Slot>,
    arenas: usize,
}

// SAFETY: the slots point into arenas that stay mapped for the life of the process, and each
// slot is either in `free` or owned by exactly one `LockedKey`, moved under the mutex.
unsafe impl Send for Pool {}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    arenas: 0,
});
static FULL_SAID: AtomicBool = AtomicBool::new(false);
static LOCK_REFUSED: AtomicBool = AtomicBool::new(false);

/// Maps, marks and locks a new arena; its slots, or none if it could not be mapped.
fn new_arena() -> Option<Vec<Slot>> {
    use rustix::mm::{Advice, MapFlags, ProtFlags, madvise, mlock, mmap_anonymous};
    let protection = ProtFlags::READ | ProtFlags::WRITE;
    // SAFETY: a fresh private anonymous mapping at an address the kernel picks aliases
    // nothing; it is never unmapped, so every slot stays valid for the life of the process.
    let base = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            ARENA_BYTES,
            protection,
            MapFlags::PRIVATE,
        )
    }
    .map_err(|error| tracing::warn!(%error, "could not map locked memory for keys"))
    .ok()?;
    // SAFETY: the range is exactly the mapping just made; advice and locking change neither
    // its contents nor its mapping.
    unsafe {
        if let Err(error) = madvise(base, ARENA_BYTES, Advice::LinuxDontDump) {
            tracing::warn!(%error, "could not keep keys out of core dumps (MADV_DONTDUMP)");
        }
        if let Err(error) = mlock(base, ARENA_BYTES)
            && !LOCK_REFUSED.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(%error, "could not lock keys in memory (mlock; raise RLIMIT_MEMLOCK): they may be swapped out");
        }
    }
    let base = base.cast::<[u8; KEY_BYTES]>();
    // SAFETY: every offset stays inside the mapping, which is not null.
    let slots = (0..SLOTS_PER_ARENA)
        .rev()
        .map(|i| unsafe { NonNull::new_unchecked(base.add(i)) })
        .collect();
    Some(slots)
}

/// A free slot of locked memory (zeroed), or none when the arenas are all used.
fn take_slot() -> Option<Slot> {
    let mut pool = POOL.lock().expect("key pool poisoned");
    if let Some(slot) = pool.free.pop() {
        return Some(slot);
    }
    if pool.arenas >= ARENAS_MAX {
        if !FULL_SAID.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                keys = LOCKED_KEYS_MAX,
                "locked memory for keys is full: further keys live on the heap (the process stays non-dumpable)"
            );
        }
        return None;
    }
    pool.free = new_arena()?;
    pool.arenas += 1;
    pool.free.pop()
}

/// A 32-byte key in locked, `MADV_DONTDUMP` memory (on the heap when that is full), zeroed
/// on drop.
pub struct LockedKey(Place);

enum Place {
    Locked(Slot),
    Heap(Box<[u8; KEY_BYTES]>),
}

// SAFETY: a `LockedKey` owns its slot alone (see `Pool`), as a `Box` owns its allocation.
unsafe impl Send for LockedKey {}
// SAFETY: shared references only read the slot; writing needs `&mut self`.
unsafe impl Sync for LockedKey {}

impl LockedKey {
    /// A key of zeros, to be filled in place.
    pub fn zeroed() -> LockedKey {
        match take_slot() {
            Some(slot) => LockedKey(Place::Locked(slot)),
            None => LockedKey(Place::Heap(Box::new([0; KEY_BYTES]))),
        }
    }

    /// A copy of `bytes` (the caller zeroes its own copy).
    pub fn new(bytes: &[u8; KEY_BYTES]) -> LockedKey {
        let mut key = LockedKey::zeroed();
        key.as_mut_bytes().copy_from_slice(bytes);
        key
    }

    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        match &self.0 {
            // SAFETY: the slot is valid and owned by this key (see `Pool`).
            Place::Locked(slot) => unsafe { slot.as_ref() },
            Place::Heap(bytes) => bytes,
        }
    }

    pub fn as_mut_bytes(&mut self) -> &mut [u8; KEY_BYTES] {
        match &mut self.0 {
            // SAFETY: as in `as_bytes`, and `&mut self` makes this the only reference.
            Place::Locked(slot) => unsafe { slot.as_mut() },
            Place::Heap(bytes) => bytes,
        }
    }

    /// Whether the key is in locked memory (else on the heap).
    pub fn is_locked(&self) -> bool {
        matches!(self.0, Place::Locked(_))
    }
}

impl Drop for LockedKey {
    fn drop(&mut self) {
        self.as_mut_bytes().zeroize();
        if let Place::Locked(slot) = self.0 {
            POOL.lock().expect("key pool poisoned").free.push(slot);
        }
    }
}

impl ZeroizeOnDrop for LockedKey {}

impl Clone for LockedKey {
    fn clone(&self) -> LockedKey {
        LockedKey::new(self.as_bytes())
    }
}

impl std::fmt::Debug for LockedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockedKey(hidden)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags of the mapping that holds `address` (`/proc/self/smaps`).
    fn flags_at(address: usize) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or_default();
            if let Some((start, end)) = range.split_once('-')
                && let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                )
            {
                inside = (start..end).contains(&address);
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.split_whitespace().map(String::from).collect();
            }
        }
        panic!("no mapping holds {address:#x}");
    }

    /// Keys sit in pages kept out of core dumps and locked in RAM (where the limit allows:
    /// root, or a high enough RLIMIT_MEMLOCK), a clone in a slot of its own, and a dropped
    /// key's slot is zero before it is handed out again.
    #[test]
    fn keys_live_in_locked_undumped_pages_and_are_zeroed_on_drop() {
        let key = LockedKey::new(&[7; KEY_BYTES]);
        assert!(key.is_locked());
        let address = key.as_bytes().as_ptr() as usize;
        let flags = flags_at(address);
        assert!(
            flags.iter().any(|f| f == "dd"),
            "not MADV_DONTDUMP: {flags:?}"
        );
        if !LOCK_REFUSED.load(Ordering::Relaxed) {
            assert!(flags.iter().any(|f| f == "lo"), "not locked: {flags:?}");
        }
        let copy = key.clone();
        assert_eq!(copy.as_bytes(), &[7; KEY_BYTES]);
        assert_ne!(copy.as_bytes().as_ptr() as usize, address);
        drop(copy);
        drop(key);
        let slots: Vec<Slot> = (0..4).filter_map(|_| take_slot()).collect();
        for slot in &slots {
            // SAFETY: slots taken here are owned by this test until pushed back below.
            assert_eq!(unsafe { slot.as_ref() }, &[0; KEY_BYTES]);
        }
        assert!(
            slots.iter().any(|s| s.as_ptr() as usize == address),
            "slots are reused"
        );
        POOL.lock().expect("pool").free.extend(slots);
    }
}
