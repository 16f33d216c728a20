//! The records of the metadata store, as the operations see them. Backends map them onto
//! their own storage (columns, documents); `docs/format.md` documents those schemas.

use sha2::{Digest, Sha256};

pub use format::ids::{ChunkIndex, FileId, Generation, Version};

/// The generation of a chunk that was never written (a hole), and so the base of its first
/// write.
pub const NO_GENERATION: Generation = Generation(0);

/// Nanoseconds since the Unix epoch.
pub type Time = i64;

/// The current time.
pub fn now() -> Time {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Regular = 1,
    Directory = 2,
    Symlink = 3,
    Fifo = 4,
    Socket = 5,
    CharDevice = 6,
    BlockDevice = 7,
}

impl Kind {
    pub fn from_code(code: i64) -> Option<Kind> {
        Some(match code {
            1 => Kind::Regular,
            2 => Kind::Directory,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::Socket,
            6 => Kind::CharDevice,
            7 => Kind::BlockDevice,
            _ => return None,
        })
    }
}

/// Who an access-control entry or a wrapped key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    User(u32),
    Group(u32),
}

impl Principal {
    /// A stable text form used as a key by backends: "u:1000", "g:7".
    pub fn key(&self) -> String {
        match self {
            Principal::User(uid) => format!("u:{uid}"),
            Principal::Group(gid) => format!("g:{gid}"),
        }
    }

    pub fn from_key(key: &str) -> Option<Principal> {
        let (kind, id) = key.split_once(':')?;
        let id = id.parse().ok()?;
        match kind {
            "u" => Some(Principal::User(id)),
            "g" => Some(Principal::Group(id)),
            _ => None,
        }
    }
}

/// What a signed record is (the store keeps them opaque, by kind, id and sub).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    /// The signed ACL record of inode `id` (sub 0).
    Acl = 1,
    /// The signed record of group `id` (sub 0).
    Group = 2,
    /// Group `id`'s private keys wrapped to user `sub` (0: the site administrator).
    GroupKey = 3,
    /// The manifest of file `id` (sub 0), MACed by its writer under the file's key.
    Manifest = 5,
}

/// Where a signed record is stored: its kind, id and sub (see [`RecordKind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SignedKey(pub RecordKind, pub u64, pub u32);

impl RecordKind {
    pub fn from_code(code: i64) -> Option<RecordKind> {
        match code {
            1 => Some(RecordKind::Acl),
            2 => Some(RecordKind::Group),
            3 => Some(RecordKind::GroupKey),
            5 => Some(RecordKind::Manifest),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclEntry {
    pub principal: Principal,
    pub read: bool,
    pub write: bool,
}

/// A file, directory or other node. Its number is the file ID of `docs/format.md` (random,
/// 0 invalid, [`FileId::ROOT`] the root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub ino: FileId,
    pub kind: Kind,
    /// Permission bits (0o7777).
    pub perm: u32,
    /// POSIX owner and group as `stat` shows them.
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub rdev: u64,
    /// The vault user who owns it: access control and sharing.
    pub owner: u32,
    /// Bumped by every change of the inode.
    pub version: Version,
    /// For directories, the parent (the root is its own parent); otherwise the directory of
    /// the first link.
    pub parent: FileId,
    /// Symlink target.
    pub target: Vec<u8>,
    pub acl: Vec<AclEntry>,
    /// Set when the last link went while a client held the file open.
    pub orphaned_at: Option<Time>,
}

/// A directory entry: the child and its kind (so that listings need not load every inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ino: FileId,
    pub kind: Kind,
    /// The client's seal binding the entry's sealed name to `ino` and `kind` (docs/format.md
    /// section 5.6); none in a directory of plaintext names.
    pub seal: Option<EntrySeal>,
}

/// An entry's seal, as the client made it (the server cannot check it).
pub type EntrySeal = [u8; format::names::ENTRY_SEAL_BYTES];

/// An entry seal as the wire or a store carries it: empty for none, else exactly its bytes.
pub fn entry_seal(bytes: &[u8]) -> Option<Option<EntrySeal>> {
    if bytes.is_empty() {
        return Some(None);
    }
    bytes.try_into().ok().map(Some)
}

/// An extended attribute: name and value.
pub type Xattr = (Vec<u8>, Vec<u8>);

/// One chunk file of the chunk store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkRef {
    pub ino: FileId,
    pub index: ChunkIndex,
    pub generation: Generation,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub name: String,
    pub signing_key: [u8; 32],
    pub wrapping_key: [u8; 32],
    /// The site administrator's signature over the user's name, uid and keys; empty while
    /// the registration waits for approval.
    pub certificate: Vec<u8>,
    pub created: Time,
}

impl User {
    pub fn is_active(&self) -> bool {
        !self.certificate.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub gid: u32,
    pub name: String,
    pub members: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub token_hash: [u8; 32],
    pub uid: u32,
    pub admin: bool,
    pub expires: Time,
}

/// One audit event. `hash` covers every other field, `prev_hash` included, so that editing,
/// removing or reordering entries breaks the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: u64,
    pub time: Time,
    pub uid: u32,
    pub event: String,
    /// The file the event is about (`FileId(0)`: none).
    pub ino: FileId,
    pub detail: String,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

impl AuditEntry {
    /// The hash an entry with these fields must carry.
    pub fn compute_hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"vault/v1 audit");
        hasher.update(self.seq.to_le_bytes());
        hasher.update(self.time.to_le_bytes());
        hasher.update(self.uid.to_le_bytes());
        for text in [self.event.as_bytes(), self.detail.as_bytes()] {
            hasher.update((text.len() as u64).to_le_bytes());
            hasher.update(text);
        }
        hasher.update(self.ino.0.to_le_bytes());
        hasher.update(self.prev_hash);
        hasher.finalize().into()
    }
}

/// ACLs are stored as one small blob per inode: 9 bytes per entry (kind, id u32 LE, read,
/// write, two zero bytes reserved).
pub fn encode_acl(acl: &[AclEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(acl.len() * 9);
    for entry in acl {
        let (kind, id) = match entry.principal {
            Principal::User(uid) => (b'u', uid),
            Principal::Group(gid) => (b'g', gid),
        };
        out.push(kind);
        out.extend_from_slice(&id.to_le_bytes());
        out.push(u8::from(entry.read));
        out.push(u8::from(entry.write));
        out.extend_from_slice(&[0, 0]);
    }
    out
}

pub fn decode_acl(bytes: &[u8]) -> Option<Vec<AclEntry>> {
    if !bytes.len().is_multiple_of(9) {
        return None;
    }
    bytes
        .chunks(9)
        .map(|e| {
            let id = u32::from_le_bytes([e[1], e[2], e[3], e[4]]);
            let principal = match e[0] {
                b'u' => Principal::User(id),
                b'g' => Principal::Group(id),
                _ => return None,
            };
            (e[5] <= 1 && e[6] <= 1).then_some(AclEntry {
                principal,
                read: e[5] == 1,
                write: e[6] == 1,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_round_trips_and_garbage_is_refused() {
        let acl = vec![
            AclEntry {
                principal: Principal::User(1000),
                read: true,
                write: false,
            },
            AclEntry {
                principal: Principal::Group(7),
                read: true,
                write: true,
            },
        ];
        assert_eq!(decode_acl(&encode_acl(&acl)), Some(acl));
        assert_eq!(decode_acl(&[1, 2, 3]), None);
        assert_eq!(decode_acl(&[b'x', 0, 0, 0, 0, 1, 1, 0, 0]), None);
    }

    #[test]
    fn principal_keys_round_trip() {
        for p in [Principal::User(0), Principal::Group(u32::MAX)] {
            assert_eq!(Principal::from_key(&p.key()), Some(p));
        }
        assert_eq!(Principal::from_key("x:1"), None);
    }
}
