//! The wire between `vaultfs` and `storaged`: the gRPC schema (`vault.proto`, compiled here)
//! and the limits both sides enforce, in one place with units in their names.

pub mod limits;

/// The generated messages, client and server of `vault.proto`.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("vault.v1");
}

pub use v1::{ErrorKind, FileKind};

/// The status metadata key that carries an [`ErrorKind`] name.
pub const ERROR_KIND_KEY: &str = "vault-error";

/// The user name the site administrator logs in as (with the administrator key).
pub const ADMIN_NAME: &str = "admin";

/// storaged's data directory when none is given, and so where its Unix socket is found:
/// `/var/lib/vault-storaged` for root, `~/.local/share/vault-storaged` for anyone else.
pub fn default_data_dir() -> std::path::PathBuf {
    let root = rustix::process::geteuid().is_root();
    match std::env::var_os("HOME") {
        Some(home) if !root => std::path::PathBuf::from(home).join(".local/share/vault-storaged"),
        _ => std::path::PathBuf::from("/var/lib/vault-storaged"),
    }
}

/// Where storaged takes claims for chunk file descriptors (`GetChunkReply.descriptor_ticket`):
/// beside its Unix socket `api`, with `.fd` appended.
pub fn descriptor_socket(api: &std::path::Path) -> std::path::PathBuf {
    let mut path = api.as_os_str().to_owned();
    path.push(".fd");
    path.into()
}

/// The length of a `GetChunkReply.descriptor_ticket`, as written to the descriptor socket.
pub const DESCRIPTOR_TICKET_BYTES: usize = 16;
/// The descriptor socket's answer to a claim: the descriptor comes with it.
pub const DESCRIPTOR_GRANTED: u8 = 0;
/// The descriptor socket's answer to a claim: no descriptor (ticket unknown, used, expired,
/// or another user's).
pub const DESCRIPTOR_REFUSED: u8 = 1;

impl v1::Timestamp {
    /// Nanoseconds since the Unix epoch, as the metadata stores times; `None` when the
    /// nanoseconds are out of range or the time does not fit.
    pub fn as_nanos(&self) -> Option<i64> {
        if self.nanos >= 1_000_000_000 {
            return None;
        }
        self.seconds
            .checked_mul(1_000_000_000)?
            .checked_add(i64::from(self.nanos))
    }
}

/// The names a server lists in `HelloReply.features`.
pub mod features {
    /// Commits apply `PutChunkRequest.set_attr` and `CommitChunksRequest.set_attr`.
    pub const COMMIT_SET_ATTR: &str = "commit-set-attr";
    /// Directory leases: `Lease` and `Recalls` (only a server that is the vault's sole
    /// instance grants them).
    pub const LEASES: &str = "leases";
    /// `PutChunks`: several puts in one call.
    pub const PUT_CHUNKS: &str = "put-chunks";
    /// `Unlinks`: several unlinks in one call.
    pub const UNLINKS: &str = "unlinks";
    /// Commits store `manifest` and `Open` returns it (docs/format.md section 5.5).
    pub const MANIFESTS: &str = "manifests";
    /// Sealed names, entry seals, directory keys and client-chosen IDs of every new node
    /// (docs/format.md section 5.6).
    pub const SEALED_NAMES: &str = "sealed-names";
    /// `OpenMany`: the opens of a directory's small files in one call, under its lease.
    pub const OPEN_MANY: &str = "open-many";
    /// Every feature this build's server always has.
    pub const ALL: &[&str] = &[
        COMMIT_SET_ATTR,
        PUT_CHUNKS,
        UNLINKS,
        MANIFESTS,
        SEALED_NAMES,
        OPEN_MANY,
    ];
}

/// The metadata that names the calling client (see `LeaseRequest`).
pub const CLIENT_KEY: &str = "vault-client";

/// Signature domains (see `identity::Identity::sign`).
pub mod domains {
    pub const REGISTER: &str = "vault/v1 register";
    pub const LOGIN: &str = "vault/v1 login";
    pub const USER_CERTIFICATE: &str = "vault/v1 user certificate";
    pub const AUDIT_ANCHOR: &str = "vault/v1 audit anchor";
}

/// The message an audit anchor signs: vault ID, the entry's sequence number (u64 LE), its
/// hash.
pub fn audit_anchor_message(vault: &[u8], seq: u64, hash: &[u8]) -> Vec<u8> {
    framed(&[vault, &seq.to_le_bytes(), hash])
}

/// The message a registration proof signs: vault ID, name, signing key, wrapping key.
pub fn register_message(vault: &[u8], name: &str, signing: &[u8], wrapping: &[u8]) -> Vec<u8> {
    framed(&[vault, name.as_bytes(), signing, wrapping])
}

/// The message a login signs: vault ID and challenge.
pub fn login_message(vault: &[u8], challenge: &[u8]) -> Vec<u8> {
    framed(&[vault, challenge])
}

/// The message a user certificate signs: vault ID, uid, name, signing key, wrapping key.
pub fn certificate_message(
    vault: &[u8],
    uid: u32,
    name: &str,
    signing: &[u8],
    wrapping: &[u8],
) -> Vec<u8> {
    framed(&[
        vault,
        &uid.to_le_bytes(),
        name.as_bytes(),
        signing,
        wrapping,
    ])
}

/// Each field prefixed by its length (u32 LE), so that no two field lists sign alike.
fn framed(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for field in fields {
        out.extend_from_slice(&(field.len() as u32).to_le_bytes());
        out.extend_from_slice(field);
    }
    out
}

impl ErrorKind {
    /// The metadata form: lower case with dashes ("not-empty").
    pub fn wire_name(self) -> String {
        self.as_str_name().to_ascii_lowercase().replace('_', "-")
    }

    pub fn from_wire_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::from_str_name(&name.to_ascii_uppercase().replace('-', "_"))
    }
}

/// An entry seal (docs/format.md section 5.6) as `Attr` carries it: two little-endian halves.
pub fn seal_halves(seal: [u8; 16]) -> (u64, u64) {
    let low = u64::from_le_bytes(seal[..8].try_into().expect("8 bytes"));
    let high = u64::from_le_bytes(seal[8..].try_into().expect("8 bytes"));
    (low, high)
}

/// The entry seal an `Attr` carries, if any (both halves 0: none).
pub fn attr_seal(attr: &v1::Attr) -> Option<[u8; 16]> {
    if attr.entry_seal_low == 0 && attr.entry_seal_high == 0 {
        return None;
    }
    let mut seal = [0u8; 16];
    seal[..8].copy_from_slice(&attr.entry_seal_low.to_le_bytes());
    seal[8..].copy_from_slice(&attr.entry_seal_high.to_le_bytes());
    Some(seal)
}
