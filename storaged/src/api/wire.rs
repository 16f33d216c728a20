//! Conversions between the records of `crate::meta` and `crate::ops` and the messages of
//! vault.proto: the wire's shapes stay here, so the operations never see them.

use proto::v1::*;

use crate::meta::{
    self, ChunkIndex, EntrySeal, FileId, Generation, Inode, Kind, Principal, StoreError, Time, Txn,
    now,
};
use crate::ops::tree::{AttrChanges, NewFile, NewNode};
use crate::ops::{Caller, OpError, access};

pub fn timestamp(time: Time) -> Timestamp {
    Timestamp {
        seconds: time.div_euclid(1_000_000_000),
        nanos: time.rem_euclid(1_000_000_000) as u32,
    }
}

fn time_of(stamp: Option<&Timestamp>) -> Result<Option<Time>, OpError> {
    stamp
        .map(|t| {
            t.as_nanos().ok_or_else(|| {
                OpError::invalid("timestamp out of range (or nanoseconds past 999,999,999)")
            })
        })
        .transpose()
}

fn kind_to_wire(kind: Kind) -> FileKind {
    match kind {
        Kind::Regular => FileKind::Regular,
        Kind::Directory => FileKind::Directory,
        Kind::Symlink => FileKind::Symlink,
        Kind::Fifo => FileKind::Fifo,
        Kind::Socket => FileKind::Socket,
        Kind::CharDevice => FileKind::CharDevice,
        Kind::BlockDevice => FileKind::BlockDevice,
    }
}

/// The kind of node `mknod` makes (not a regular file, directory or symlink).
pub fn special_kind(wire: i32) -> Result<Kind, OpError> {
    match FileKind::try_from(wire) {
        Ok(FileKind::Fifo) => Ok(Kind::Fifo),
        Ok(FileKind::Socket) => Ok(Kind::Socket),
        Ok(FileKind::CharDevice) => Ok(Kind::CharDevice),
        Ok(FileKind::BlockDevice) => Ok(Kind::BlockDevice),
        _ => Err(OpError::invalid(
            "mknod makes fifos, sockets and device nodes",
        )),
    }
}

/// An inode's attributes as `caller` sees them (its rights included).
pub fn attr(inode: &Inode, caller: &Caller) -> Attr {
    Attr {
        ino: inode.ino.0,
        kind: kind_to_wire(inode.kind) as i32,
        perm: inode.perm,
        uid: inode.uid,
        gid: inode.gid,
        nlink: inode.nlink,
        size: inode.size,
        atime: Some(timestamp(inode.atime)),
        mtime: Some(timestamp(inode.mtime)),
        ctime: Some(timestamp(inode.ctime)),
        rdev: inode.rdev,
        owner: inode.owner,
        version: inode.version.get(),
        may_read: access::may_read(caller, inode),
        may_write: access::may_write(caller, inode),
        parent_version: 0,
        entry_seal_low: 0,
        entry_seal_high: 0,
    }
}

pub fn principal_of(wire: Option<&proto::v1::Principal>) -> Result<Principal, OpError> {
    match wire.and_then(|p| p.kind) {
        Some(principal::Kind::User(uid)) => Ok(Principal::User(uid)),
        Some(principal::Kind::Group(gid)) => Ok(Principal::Group(gid)),
        None => Err(OpError::invalid("a principal is required")),
    }
}

pub fn principal_to_wire(principal: Principal) -> proto::v1::Principal {
    proto::v1::Principal {
        kind: Some(match principal {
            Principal::User(uid) => principal::Kind::User(uid),
            Principal::Group(gid) => principal::Kind::Group(gid),
        }),
    }
}

pub fn wrapped_keys_of(keys: &[WrappedKey]) -> Result<Vec<(Principal, Vec<u8>)>, OpError> {
    keys.iter()
        .map(|k| Ok((principal_of(k.principal.as_ref())?, k.blob.clone())))
        .collect()
}

pub fn wrapped_keys_to_wire(keys: Vec<(Principal, Vec<u8>)>) -> Vec<WrappedKey> {
    keys.into_iter()
        .map(|(p, blob)| WrappedKey {
            principal: Some(principal_to_wire(p)),
            blob,
        })
        .collect()
}

/// How many entries a page of a listing holds: as asked, or `default` when the request
/// leaves it at 0.
pub fn page_limit(asked: u32, default: usize) -> usize {
    if asked == 0 { default } else { asked as usize }
}

/// A file's chunks, (index, generation) each.
pub fn chunks_to_wire(chunks: Vec<(ChunkIndex, Generation)>) -> Vec<ChunkInfo> {
    chunks
        .into_iter()
        .map(|(index, generation)| ChunkInfo {
            index: index.get(),
            generation: generation.get(),
        })
        .collect()
}

pub fn user_to_wire(user: &meta::User) -> User {
    User {
        uid: user.uid,
        name: user.name.clone(),
        signing_key: user.signing_key.to_vec(),
        wrapping_key: user.wrapping_key.to_vec(),
        certificate: user.certificate.clone(),
    }
}

pub fn group_to_wire(group: &meta::Group) -> Group {
    Group {
        gid: group.gid,
        name: group.name.clone(),
        members: group.members.clone(),
        record: Vec::new(),
    }
}

/// A record looked up, if it is there.
type Found<T> = Result<Option<T>, StoreError>;

/// The choice two flags of a request make, each excluding the other: `neither`, `first` or
/// `second`; both set is invalid, as `both` says.
pub fn choice<T>(
    (first, second): (bool, bool),
    [neither, if_first, if_second]: [T; 3],
    both: &str,
) -> Result<T, OpError> {
    match (first, second) {
        (false, false) => Ok(neither),
        (true, false) => Ok(if_first),
        (false, true) => Ok(if_second),
        (true, true) => Err(OpError::invalid(both)),
    }
}

/// The user a `GetUser` request asks for, if there is one.
pub fn user_by(txn: &mut dyn Txn, by: &get_user_request::By) -> Found<meta::User> {
    match by {
        get_user_request::By::Name(name) => txn.get_user_by_name(name),
        get_user_request::By::Uid(uid) => txn.get_user(*uid),
    }
}

/// The group a `GetGroup` request asks for, if there is one.
pub fn group_by(txn: &mut dyn Txn, by: &get_group_request::By) -> Found<meta::Group> {
    match by {
        get_group_request::By::Name(name) => txn.get_group_by_name(name),
        get_group_request::By::Gid(gid) => txn.get_group(*gid),
    }
}

/// The file a `Create` request asks for.
pub fn new_file(r: &CreateRequest) -> Result<NewFile, OpError> {
    let wrapped_keys = wrapped_keys_of(&r.wrapped_keys)?;
    let node = NewNode {
        kind: Kind::Regular,
        perm: r.perm,
        uid: r.uid,
        gid: r.gid,
        rdev: 0,
        target: Vec::new(),
        ino: Some(FileId(r.ino)),
        acl_record: r.acl_record.clone(),
        entry_seal: seal_of(&r.entry_seal)?,
    };
    Ok(NewFile {
        parent: FileId(r.parent),
        name: r.name.clone(),
        node,
        wrapped_keys,
    })
}

/// An entry seal as the wire carries it: empty for none, else exactly 16 bytes.
pub fn seal_of(bytes: &[u8]) -> Result<Option<EntrySeal>, OpError> {
    crate::meta::entry_seal(bytes).ok_or_else(|| {
        OpError::invalid(format!(
            "an entry seal is {} bytes",
            format::names::ENTRY_SEAL_BYTES
        ))
    })
}

/// An inode number a client chose, or none (0) for the server to draw one.
pub fn chosen_ino(ino: u64) -> Option<FileId> {
    (ino != 0).then_some(FileId(ino))
}

/// What a `SetAttr` asks to change; "now" is the server's clock.
pub fn attr_changes(r: &SetAttrRequest) -> Result<AttrChanges, OpError> {
    let stamp = |now_flag: bool, given: Option<&Timestamp>| -> Result<Option<Time>, OpError> {
        if now_flag {
            Ok(Some(now()))
        } else {
            time_of(given)
        }
    };
    Ok(AttrChanges {
        perm: r.perm,
        uid: r.uid,
        gid: r.gid,
        size: r.size,
        atime: stamp(r.atime_now, r.atime.as_ref())?,
        mtime: stamp(r.mtime_now, r.mtime.as_ref())?,
    })
}

/// The attribute changes a commit carries, applied after its chunks.
pub fn commit_attr_changes(
    set_attr: Option<&SetAttrRequest>,
) -> Result<Option<AttrChanges>, OpError> {
    let Some(set_attr) = set_attr else {
        return Ok(None);
    };
    if set_attr.size.is_some() {
        return Err(OpError::invalid(
            "the attribute changes of a commit cannot set a size",
        ));
    }
    attr_changes(set_attr).map(Some)
}
