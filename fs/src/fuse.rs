//! The FUSE adapter: each operation turns the kernel's request into a call of [`Vault`] and
//! its result into a reply. No logic lives here beyond conversions.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use format::ids::{FileId, Handle};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use proto::v1::{Attr, FileKind, Timestamp};

use crate::error::{FsError, errno};
use crate::vault::{
    Changes, Listing, Node, Owner, RenameMode, Vault, kept_xattr, stamp, system_time,
};

/// Writes up to 1 MiB per request.
pub const MAX_WRITE_BYTES: u32 = 1 << 20;

pub struct VaultFs {
    vault: Arc<Vault>,
    /// The user who mounted: only they (and root) may use the mount.
    owner_uid: u32,
    /// How long the kernel keeps entries and attributes: the mount's coherence window.
    ttl: Duration,
}

impl std::fmt::Debug for VaultFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VaultFs(owner {})", self.owner_uid)
    }
}

impl VaultFs {
    pub fn new(vault: Arc<Vault>, owner_uid: u32) -> VaultFs {
        let ttl = vault.shared().limits.coherence;
        VaultFs {
            vault,
            owner_uid,
            ttl,
        }
    }

    /// The mount carries its owner's vault credentials; other local users must not use them.
    fn allowed(&self, request: &Request) -> Result<(), Errno> {
        if request.uid() == self.owner_uid || request.uid() == 0 {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }
}

/// Answers a request that returns nothing but success or an errno.
fn reply_empty(reply: ReplyEmpty, outcome: Result<(), FsError>) {
    match outcome {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(fail(&e)),
    }
}

/// Who owns what a request makes: its caller.
fn owner(req: &Request) -> Owner {
    Owner {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// The permission bits a new file gets from the mode asked for and the caller's umask.
fn perm(mode: u32, umask: u32) -> u32 {
    mode & !umask & 0o7777
}

/// The vault's file for the kernel's inode number.
fn file(ino: INodeNo) -> FileId {
    FileId(ino.0)
}

/// The vault's handle for the kernel's file handle.
fn handle(fh: FileHandle) -> Handle {
    Handle(fh.0)
}

fn fail(error: &FsError) -> Errno {
    tracing::debug!(%error, "operation failed");
    Errno::from_i32(errno(error))
}

fn file_type(kind: i32) -> FileType {
    match FileKind::try_from(kind) {
        Ok(FileKind::Directory) => FileType::Directory,
        Ok(FileKind::Symlink) => FileType::Symlink,
        Ok(FileKind::Fifo) => FileType::NamedPipe,
        Ok(FileKind::Socket) => FileType::Socket,
        Ok(FileKind::CharDevice) => FileType::CharDevice,
        Ok(FileKind::BlockDevice) => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: system_time(attr.atime.as_ref()),
        mtime: system_time(attr.mtime.as_ref()),
        ctime: system_time(attr.ctime.as_ref()),
        crtime: system_time(attr.ctime.as_ref()),
        kind: file_type(attr.kind),
        perm: (attr.perm & 0o7777) as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev as u32,
        blksize: MAX_WRITE_BYTES,
        flags: 0,
    }
}

/// A file opened only for writing skips the kernel's page cache (`FOPEN_DIRECT_IO`): its
/// writes reach the client straight from the writer's memory, a copy less, and nothing reads
/// what the cache would keep. Every write(2) is one FUSE request either way (no kernel
/// write-back cache here).
fn write_only(flags: i32) -> FopenFlags {
    if flags & libc::O_ACCMODE == libc::O_WRONLY {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    }
}

/// Pages through a directory the way the kernel asks for it: offset 1 is ".", 2 is "..",
/// 3 + i is listing entry i. `add` gets each entry's inode, its offset (where the next page
/// starts), name and attributes (none for the dots); it returns true when the reply is full.
fn page_listing(
    ino: u64,
    listing: &Listing,
    offset: u64,
    mut add: impl FnMut(u64, u64, &[u8], Option<&Attr>) -> bool,
) {
    let mut position = offset;
    for dots in [&b"."[..], &b".."[..]].into_iter().skip(offset as usize) {
        position += 1;
        if add(ino, position, dots, None) {
            return;
        }
    }
    for (name, attr) in listing.iter().skip((position as usize).saturating_sub(2)) {
        position += 1;
        if add(attr.ino, position, name, Some(attr)) {
            return;
        }
    }
}

fn time_or_now(value: Option<TimeOrNow>) -> (Option<Timestamp>, bool) {
    match value {
        Some(TimeOrNow::Now) => (None, true),
        Some(TimeOrNow::SpecificTime(t)) => (Some(stamp(t)), false),
        None => (None, false),
    }
}

macro_rules! allowed_or_reply {
    ($self:ident, $req:ident, $reply:ident) => {
        if let Err(e) = $self.allowed($req) {
            $reply.error(e);
            return;
        }
    };
}

/// The session's notifier tells the kernel what the vault finds stale.
impl crate::vault::Notifier for fuser::Notifier {
    fn drop_attributes(&self, ino: FileId) -> std::io::Result<()> {
        // Attributes only (a negative offset). Safe inside an open: the kernel takes no lock
        // of the inode for it.
        self.inval_inode(INodeNo(ino.0), -1, 0)
    }
}

impl VaultFs {
    /// `attr` for a reply: the vault notes which version the kernel now keeps.
    fn kernel_attr(&self, attr: &Attr) -> FileAttr {
        self.vault.kernel_has(attr);
        file_attr(attr)
    }

    /// Answers a request for an entry (a lookup, or a name just made).
    fn reply_entry(&self, reply: ReplyEntry, outcome: Result<Attr, FsError>) {
        match outcome {
            Ok(attr) => reply.entry(&self.ttl, &self.kernel_attr(&attr), Generation(0)),
            Err(e) => reply.error(fail(&e)),
        }
    }

    /// Answers a request for attributes.
    fn reply_attr(&self, reply: ReplyAttr, outcome: Result<Attr, FsError>) {
        match outcome {
            Ok(attr) => reply.attr(&self.ttl, &self.kernel_attr(&attr)),
            Err(e) => reply.error(fail(&e)),
        }
    }
}

impl Filesystem for VaultFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE_BYTES);
        let _ = config.set_max_readahead(MAX_WRITE_BYTES);
        // Directory listings carry attributes (`readdirplus`) where the kernel can take them.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(error) = self.vault.flush_all() {
            tracing::error!(%error, "unflushed data at unmount");
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        allowed_or_reply!(self, req, reply);
        self.reply_entry(reply, self.vault.lookup(file(parent), name.as_bytes()));
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        allowed_or_reply!(self, req, reply);
        self.reply_attr(reply, self.vault.getattr(file(ino)));
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        allowed_or_reply!(self, req, reply);
        let (atime, atime_now) = time_or_now(atime);
        let (mtime, mtime_now) = time_or_now(mtime);
        let changes = Changes {
            perm: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime,
            mtime,
            atime_now,
            mtime_now,
        };
        self.reply_attr(reply, self.vault.setattr(file(ino), &changes));
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        allowed_or_reply!(self, req, reply);
        match self.vault.readlink(file(ino)) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(fail(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        allowed_or_reply!(self, req, reply);
        let (perm, owner, name) = (perm(mode, umask), owner(req), name.as_bytes());
        let outcome = if mode & libc::S_IFMT == libc::S_IFREG {
            // A regular file through mknod: create it (with its key) and close it.
            let created = self.vault.create(file(parent), name, perm, true, owner);
            created.and_then(|(attr, fh)| self.vault.release(fh).map(|()| attr))
        } else if let Some(node) = Node::from_mode(mode, umask, u64::from(rdev)) {
            self.vault.mknod(file(parent), name, node, owner)
        } else {
            return reply.error(Errno::EINVAL);
        };
        self.reply_entry(reply, outcome);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        allowed_or_reply!(self, req, reply);
        let perm = perm(mode, umask);
        let made = self
            .vault
            .mkdir(file(parent), name.as_bytes(), perm, owner(req));
        self.reply_entry(reply, made);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        allowed_or_reply!(self, req, reply);
        reply_empty(reply, self.vault.unlink(file(parent), name.as_bytes()));
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        allowed_or_reply!(self, req, reply);
        reply_empty(reply, self.vault.rmdir(file(parent), name.as_bytes()));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        allowed_or_reply!(self, req, reply);
        let (name, target) = (link_name.as_bytes(), target.as_os_str().as_bytes());
        let made = self.vault.symlink(file(parent), name, target, owner(req));
        self.reply_entry(reply, made);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        allowed_or_reply!(self, req, reply);
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else {
            RenameMode::Replace
        };
        reply_empty(
            reply,
            self.vault.rename(
                file(parent),
                name.as_bytes(),
                file(newparent),
                newname.as_bytes(),
                mode,
            ),
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        allowed_or_reply!(self, req, reply);
        let linked = self
            .vault
            .link(file(ino), file(newparent), newname.as_bytes());
        self.reply_entry(reply, linked);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        allowed_or_reply!(self, req, reply);
        match self.vault.open_for(file(ino), flags.0) {
            Ok((fh, keep_cache)) => {
                let mut open_flags = write_only(flags.0);
                if keep_cache {
                    open_flags |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                reply.opened(FileHandle(fh.get()), open_flags);
            }
            Err(e) => reply.error(fail(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.vault.read(handle(fh), offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(fail(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            && let Err(e) = self.vault.drop_setid_bits(handle(fh))
        {
            return reply.error(fail(&e));
        }
        match self.vault.write(handle(fh), offset, data) {
            Ok(written) => reply.written(written as u32),
            Err(e) => reply.error(fail(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.vault.flush(handle(fh)));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.vault.release(handle(fh)));
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.vault.fsync(handle(fh)));
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        allowed_or_reply!(self, req, reply);
        match self.vault.opendir(file(ino)) {
            Ok(fh) => reply.opened(FileHandle(fh.get()), FopenFlags::empty()),
            Err(e) => reply.error(fail(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (listing, _) = match self.vault.listing(handle(fh)) {
            Ok(listing) => listing,
            Err(e) => return reply.error(fail(&e)),
        };
        page_listing(
            ino.0,
            &listing,
            offset,
            |entry_ino, position, name, attr| {
                let kind = attr.map_or(FileType::Directory, |attr| file_type(attr.kind));
                reply.add(INodeNo(entry_ino), position, kind, OsStr::from_bytes(name))
            },
        );
        reply.ok();
    }

    /// Like `readdir`, with each entry's attributes: the kernel then knows the entries without
    /// a LOOKUP each (`ls -l`, `rm -r`, `find`).
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (listing, current) = match self.vault.listing(handle(fh)) {
            Ok(listing) => listing,
            Err(e) => return reply.error(fail(&e)),
        };
        // Attributes from before a change this client made would overwrite the kernel's newer
        // ones; then they come already expired, and the kernel asks again before using them.
        let ttl = if current { self.ttl } else { Duration::ZERO };
        // The kernel links no entry for "." and "..", so their attributes are never read.
        let dot = Attr {
            ino: ino.0,
            kind: FileKind::Directory as i32,
            ..Attr::default()
        };
        page_listing(
            ino.0,
            &listing,
            offset,
            |entry_ino, position, name, attr| {
                let attr = match attr {
                    Some(attr) => self.vault.local_attr(*attr),
                    None => dot,
                };
                reply.add(
                    INodeNo(entry_ino),
                    position,
                    OsStr::from_bytes(name),
                    &ttl,
                    &self.kernel_attr(&attr),
                    Generation(0),
                )
            },
        );
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.vault.releasedir(handle(fh));
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.vault.sync_dir(file(ino)));
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        allowed_or_reply!(self, req, reply);
        match self.vault.statfs() {
            Ok(s) => {
                let block = u64::from(s.block_bytes.max(512));
                reply.statfs(
                    s.total_bytes / block,
                    s.free_bytes / block,
                    s.available_bytes / block,
                    s.files,
                    s.free_files,
                    block as u32,
                    s.name_bytes_max,
                    block as u32,
                );
            }
            Err(e) => reply.error(fail(&e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        allowed_or_reply!(self, req, reply);
        if !kept_xattr(name.as_bytes()) {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let create = flags & libc::XATTR_CREATE != 0;
        let replace = flags & libc::XATTR_REPLACE != 0;
        reply_empty(
            reply,
            self.vault
                .setxattr(file(ino), name.as_bytes(), value, create, replace),
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        allowed_or_reply!(self, req, reply);
        // The kernel asks for security.capability on every write, `ls -l` for an ACL and a
        // security label of every entry.
        if !kept_xattr(name.as_bytes()) {
            return reply.error(Errno::ENODATA);
        }
        match self.vault.getxattr(file(ino), name.as_bytes()) {
            Ok(value) => xattr_reply(reply, size, &value),
            Err(e) => reply.error(fail(&e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        allowed_or_reply!(self, req, reply);
        match self.vault.listxattr(file(ino)) {
            Ok(names) => {
                let kept = names.iter().filter(|name| kept_xattr(name));
                let list: Vec<u8> = kept
                    .flat_map(|name| name.iter().chain(&[0]).copied())
                    .collect();
                xattr_reply(reply, size, &list);
            }
            Err(e) => reply.error(fail(&e)),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        allowed_or_reply!(self, req, reply);
        reply_empty(reply, self.vault.removexattr(file(ino), name.as_bytes()));
    }

    fn access(&self, req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        allowed_or_reply!(self, req, reply);
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        allowed_or_reply!(self, req, reply);
        let exclusive = flags & libc::O_EXCL != 0;
        let perm = perm(mode, umask);
        match self
            .vault
            .create(file(parent), name.as_bytes(), perm, exclusive, owner(req))
        {
            Ok((attr, fh)) => reply.created(
                &self.ttl,
                &self.kernel_attr(&attr),
                Generation(0),
                FileHandle(fh.get()),
                write_only(flags),
            ),
            Err(e) => reply.error(fail(&e)),
        }
    }
}

/// getxattr/listxattr: a size query (0) gets the length; a buffer too small gets ERANGE.
fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}
