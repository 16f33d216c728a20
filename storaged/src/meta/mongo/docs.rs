//! Records as MongoDB documents and back: named fields an operator can read in `mongosh`
//! (`docs/format.md` section 7 lists them). Every decoding failure is `StoreError::Corrupt`
//! naming the collection, the document and the field.

use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson, Document, doc};

use super::super::*;

/// A 64-bit ID or count as BSON stores integers: its two's-complement `i64`.
pub fn long(value: u64) -> i64 {
    value as i64
}

/// An inode number as BSON stores it.
pub fn file(ino: FileId) -> i64 {
    long(ino.0)
}

/// The key fields of a signed record (`signed` collection).
pub fn signed_key(kind: RecordKind, id: u64, sub: u32) -> Document {
    doc! { "kind": kind as i32, "id": id as i64, "sub": i64::from(sub) }
}

pub fn binary(bytes: &[u8]) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    })
}

/// A name (directory entry, extended attribute) as stored: a string when it is UTF-8, so that
/// operators read it and MongoDB orders it by its bytes; binary otherwise. A sealed name
/// (docs/format.md section 5.6: a NUL, then ciphertext) is the string `/` and the hex of the
/// bytes after the NUL: no plaintext name holds `/`, and hex keeps the byte order, so that a
/// directory of sealed names lists in pages by the `name` index.
pub fn name(bytes: &[u8]) -> Bson {
    if format::names::is_sealed(bytes) {
        return Bson::String(format!("{SEALED_PREFIX}{}", hex::encode(&bytes[1..])));
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Bson::String(text.to_string()),
        Err(_) => binary(bytes),
    }
}

/// What starts the stored form of a sealed name (see [`name`]).
const SEALED_PREFIX: &str = "/";

/// Whether a name stored as the string `text` lists after `after` (stored as `stored`): by the
/// strings' order when `after` is stored as one (MongoDB's order of them), else by bytes.
pub fn after_in_text_order(text: &str, stored: &Bson, after: &[u8]) -> bool {
    match stored.as_str() {
        Some(after_text) => text > after_text,
        None => text.as_bytes() > after,
    }
}

/// Reads the fields of one document, naming it in errors.
pub struct Fields<'a> {
    doc: &'a Document,
    what: &'static str,
}

impl<'a> Fields<'a> {
    pub fn new(doc: &'a Document, what: &'static str) -> Fields<'a> {
        Fields { doc, what }
    }

    pub fn corrupt(&self, field: &str, problem: &str) -> StoreError {
        let id = self
            .doc
            .get("_id")
            .map_or_else(|| "?".to_string(), |id| id.to_string());
        StoreError::Corrupt(format!(
            "mongodb {} document {id}: field {field:?} {problem}",
            self.what
        ))
    }

    fn get(&self, field: &str) -> Result<&'a Bson, StoreError> {
        self.doc
            .get(field)
            .ok_or_else(|| self.corrupt(field, "is missing"))
    }

    /// An integer: Int64 as written, Int32 or an integral Double as an operator's edit in
    /// mongosh may leave it.
    pub fn int(&self, field: &str) -> Result<i64, StoreError> {
        match self.get(field)? {
            Bson::Int64(v) => Ok(*v),
            Bson::Int32(v) => Ok(i64::from(*v)),
            Bson::Double(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => Ok(*v as i64),
            _ => Err(self.corrupt(field, "is not an integer")),
        }
    }

    pub fn u64(&self, field: &str) -> Result<u64, StoreError> {
        self.int(field).map(|v| v as u64)
    }

    pub fn file(&self, field: &str) -> Result<FileId, StoreError> {
        self.u64(field).map(FileId)
    }

    /// A chunk index, generation or version.
    pub fn number<N: From<u64>>(&self, field: &str) -> Result<N, StoreError> {
        self.u64(field).map(N::from)
    }

    pub fn u32(&self, field: &str) -> Result<u32, StoreError> {
        u32::try_from(self.int(field)?).map_err(|_| self.corrupt(field, "is out of range"))
    }

    pub fn bool(&self, field: &str) -> Result<bool, StoreError> {
        match self.get(field)? {
            Bson::Boolean(v) => Ok(*v),
            _ => Err(self.corrupt(field, "is not a boolean")),
        }
    }

    pub fn text(&self, field: &str) -> Result<String, StoreError> {
        match self.get(field)? {
            Bson::String(v) => Ok(v.clone()),
            _ => Err(self.corrupt(field, "is not a string")),
        }
    }

    pub fn bytes(&self, field: &str) -> Result<Vec<u8>, StoreError> {
        match self.get(field)? {
            Bson::Binary(v) => Ok(v.bytes.clone()),
            _ => Err(self.corrupt(field, "is not binary")),
        }
    }

    pub fn key32(&self, field: &str) -> Result<[u8; 32], StoreError> {
        self.bytes(field)?
            .try_into()
            .map_err(|_| self.corrupt(field, "is not 32 bytes"))
    }

    /// A name written by [`name`].
    pub fn name(&self, field: &str) -> Result<Vec<u8>, StoreError> {
        match self.get(field)? {
            Bson::String(v) if v.starts_with(SEALED_PREFIX) => {
                let mut sealed = vec![format::names::SEALED_MARK];
                let bytes = hex::decode(&v[SEALED_PREFIX.len()..])
                    .map_err(|_| self.corrupt(field, "is a sealed name that is not hex"))?;
                sealed.extend_from_slice(&bytes);
                Ok(sealed)
            }
            Bson::String(v) => Ok(v.as_bytes().to_vec()),
            Bson::Binary(v) => Ok(v.bytes.clone()),
            _ => Err(self.corrupt(field, "is neither a string nor binary")),
        }
    }

    pub fn kind(&self, field: &str) -> Result<Kind, StoreError> {
        Kind::from_code(self.int(field)?).ok_or_else(|| self.corrupt(field, "is no file kind"))
    }
}

pub fn inode_doc(i: &Inode) -> Document {
    let acl: Vec<Bson> = i
        .acl
        .iter()
        .map(|e| {
            Bson::Document(doc! {
                "principal": e.principal.key(), "read": e.read, "write": e.write,
            })
        })
        .collect();
    let mut d = doc! {
        "_id": file(i.ino), "kind": i.kind as i32, "perm": i64::from(i.perm),
        "uid": i64::from(i.uid), "gid": i64::from(i.gid), "nlink": i64::from(i.nlink),
        "size": long(i.size), "atime": i.atime, "mtime": i.mtime, "ctime": i.ctime,
        "rdev": long(i.rdev), "owner": i64::from(i.owner), "version": long(i.version.get()),
        "parent": file(i.parent), "target": binary(&i.target), "acl": acl,
    };
    // Absent unless orphaned: the partial index on it then holds only orphans.
    if let Some(at) = i.orphaned_at {
        d.insert("orphaned_at", at);
    }
    d
}

pub fn inode_from(d: &Document) -> Result<Inode, StoreError> {
    let f = Fields::new(d, "inodes");
    let acl = match d.get("acl") {
        Some(Bson::Array(entries)) => entries
            .iter()
            .map(|entry| acl_entry_from(&f, entry))
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(f.corrupt("acl", "is not an array")),
    };
    let orphaned_at = match d.get("orphaned_at") {
        None | Some(Bson::Null) => None,
        Some(_) => Some(f.int("orphaned_at")?),
    };
    Ok(Inode {
        ino: f.file("_id")?,
        kind: f.kind("kind")?,
        perm: f.u32("perm")?,
        uid: f.u32("uid")?,
        gid: f.u32("gid")?,
        nlink: f.u32("nlink")?,
        size: f.u64("size")?,
        atime: f.int("atime")?,
        mtime: f.int("mtime")?,
        ctime: f.int("ctime")?,
        rdev: f.u64("rdev")?,
        owner: f.u32("owner")?,
        version: f.number("version")?,
        parent: f.file("parent")?,
        target: f.bytes("target")?,
        acl,
        orphaned_at,
    })
}

fn acl_entry_from(inode: &Fields<'_>, entry: &Bson) -> Result<AclEntry, StoreError> {
    let Bson::Document(d) = entry else {
        return Err(inode.corrupt("acl", "holds a non-document"));
    };
    let f = Fields::new(d, "inodes.acl");
    let principal = Principal::from_key(&f.text("principal")?)
        .ok_or_else(|| inode.corrupt("acl", "names no principal"))?;
    Ok(AclEntry {
        principal,
        read: f.bool("read")?,
        write: f.bool("write")?,
    })
}

pub fn entry_from(d: &Document) -> Result<(Vec<u8>, Entry), StoreError> {
    let f = Fields::new(d, "entries");
    Ok((
        f.name("name")?,
        Entry {
            ino: f.file("ino")?,
            kind: f.kind("kind")?,
            seal: match d.get("seal") {
                None => None,
                Some(_) => crate::meta::records::entry_seal(&f.bytes("seal")?)
                    .ok_or_else(|| f.corrupt("seal", "is not an entry seal"))?,
            },
        },
    ))
}

pub fn chunk_ref_from(d: &Document) -> Result<ChunkRef, StoreError> {
    let f = Fields::new(d, "garbage");
    Ok(ChunkRef {
        ino: f.file("ino")?,
        index: f.number("index")?,
        generation: f.number("generation")?,
    })
}

pub fn user_doc(u: &User) -> Document {
    doc! {
        "_id": i64::from(u.uid), "name": &u.name, "signing_key": binary(&u.signing_key),
        "wrapping_key": binary(&u.wrapping_key), "certificate": binary(&u.certificate),
        "created": u.created,
    }
}

pub fn user_from(d: &Document) -> Result<User, StoreError> {
    let f = Fields::new(d, "users");
    Ok(User {
        uid: f.u32("_id")?,
        name: f.text("name")?,
        signing_key: f.key32("signing_key")?,
        wrapping_key: f.key32("wrapping_key")?,
        certificate: f.bytes("certificate")?,
        created: f.int("created")?,
    })
}

pub fn group_doc(g: &Group) -> Document {
    let members: Vec<i64> = g.members.iter().map(|&uid| i64::from(uid)).collect();
    doc! { "_id": i64::from(g.gid), "name": &g.name, "members": members }
}

pub fn group_from(d: &Document) -> Result<Group, StoreError> {
    let f = Fields::new(d, "groups");
    let members = match d.get("members") {
        Some(Bson::Array(members)) => members
            .iter()
            .map(|m| match m {
                Bson::Int64(v) => u32::try_from(*v).ok(),
                Bson::Int32(v) => u32::try_from(*v).ok(),
                _ => None,
            })
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| f.corrupt("members", "holds a non-uid"))?,
        _ => return Err(f.corrupt("members", "is not an array")),
    };
    let mut members = members;
    members.sort_unstable();
    Ok(Group {
        gid: f.u32("_id")?,
        name: f.text("name")?,
        members,
    })
}

pub fn session_doc(s: &Session) -> Document {
    doc! {
        "_id": binary(&s.token_hash), "uid": i64::from(s.uid), "admin": s.admin,
        "expires": s.expires,
    }
}

pub fn session_from(d: &Document) -> Result<Session, StoreError> {
    let f = Fields::new(d, "sessions");
    Ok(Session {
        token_hash: f.key32("_id")?,
        uid: f.u32("uid")?,
        admin: f.bool("admin")?,
        expires: f.int("expires")?,
    })
}

pub fn audit_doc(e: &AuditEntry) -> Document {
    doc! {
        "_id": long(e.seq), "time": e.time, "uid": i64::from(e.uid), "event": &e.event,
        "ino": file(e.ino), "detail": &e.detail, "prev_hash": binary(&e.prev_hash),
        "hash": binary(&e.hash),
    }
}

pub fn audit_from(d: &Document) -> Result<AuditEntry, StoreError> {
    let f = Fields::new(d, "audit");
    Ok(AuditEntry {
        seq: f.u64("_id")?,
        time: f.int("time")?,
        uid: f.u32("uid")?,
        event: f.text("event")?,
        ino: f.file("ino")?,
        detail: f.text("detail")?,
        prev_hash: f.key32("prev_hash")?,
        hash: f.key32("hash")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_named() {
        let inode = Inode {
            ino: FileId(u64::MAX - 3),
            kind: Kind::Regular,
            perm: 0o640,
            uid: u32::MAX,
            gid: 7,
            nlink: 1,
            size: 1 << 40,
            atime: -5,
            mtime: 6,
            ctime: 7,
            rdev: 0,
            owner: 1000,
            version: Version(3),
            parent: FileId::ROOT,
            target: vec![],
            acl: vec![AclEntry {
                principal: Principal::Group(9),
                read: true,
                write: false,
            }],
            orphaned_at: Some(12),
        };
        assert_eq!(inode_from(&inode_doc(&inode)).expect("decode"), inode);
        let mut damaged = inode_doc(&inode);
        damaged.insert("perm", "rw-r-----");
        let error = inode_from(&damaged).expect_err("damaged").to_string();
        assert!(error.contains("\"perm\""), "{error}");
        damaged.insert("perm", 416.0);
        assert_eq!(inode_from(&damaged).expect("an integral double").perm, 416);
    }

    #[test]
    fn sealed_names_are_slash_and_hex_in_byte_order() {
        let sealed = [0u8, 0xab, 0x00, 0x2f];
        assert_eq!(name(&sealed), Bson::String("/ab002f".into()));
        let d = doc! { "name": name(&sealed) };
        assert_eq!(Fields::new(&d, "t").name("name").expect("name"), sealed);
        let (low, high) = (name(&[0, 0x10]), name(&[0, 0x10, 0]));
        assert!(low.as_str() < high.as_str() && high.as_str() < name(&[0, 0x11]).as_str());
    }

    #[test]
    fn names_are_text_when_utf8_and_binary_otherwise() {
        assert_eq!(name("café".as_bytes()), Bson::String("café".into()));
        assert!(matches!(name(&[0xff, b'a']), Bson::Binary(_)));
        for bytes in [&b"plain"[..], &[0xff, 0], "é".as_bytes()] {
            let d = doc! { "name": name(bytes) };
            assert_eq!(Fields::new(&d, "t").name("name").expect("name"), bytes);
        }
    }
}
