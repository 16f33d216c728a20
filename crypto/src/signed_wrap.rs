//! Signed wraps (docs/format.md section 5.1, wrapped key version 2): a list of keys (a file's
//! data keys of every epoch still in use, or a group's key pairs), HPKE-sealed to one
//! recipient and signed by whoever wrapped them. A reader checks the signature against the
//! wrapper's certified key, and the wrapper's right to write the object, before it uses any of
//! the keys: the storage administrator cannot make a wrapped key a client accepts.

use format::acl::Principal;
use format::envelope::COMMITMENT_BYTES;
use format::ids::{FileId, VaultId};
use format::wrapped::{
    KeyKind, SignedWrapHeader, V2_DOMAIN, V2_HEADER_BYTES, V2_KEYS_MAX, WrapHeaderError, WrapKind,
};
use hpke::aead::{AeadTag, AesGcm256};
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, Serializable};
use identity::{Identity, PublicIdentity};
use zeroize::Zeroizing;

use crate::keys::{ChunkCipher, DataKey};
use crate::wrap::{PreparedWrap, UnwrapError, WrapError};

pub(crate) const HPKE_INFO: &[u8] = b"vault/v2 key wrap";
const ENC_BYTES: usize = 32;
const TAG_BYTES: usize = 16;

type KemSuite = X25519HkdfSha256;

/// Who a signed wrap is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recipient {
    pub principal: Principal,
    /// The principal's X25519 public key (a user's, or a group's current one).
    pub wrapping_key: [u8; 32],
}

/// Who signs a wrap: a vault uid (0 for the site administrator) and its identity.
#[derive(Clone, Copy, Debug)]
pub struct Wrapper<'a> {
    pub uid: u32,
    pub identity: &'a Identity,
}

/// The object a wrap is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Object {
    pub vault: VaultId,
    pub kind: KeyKind,
    pub id: u64,
}

impl Object {
    pub fn file(vault: VaultId, ino: u64) -> Object {
        Object {
            vault,
            kind: KeyKind::Data(WrapKind::FileKey),
            id: ino,
        }
    }

    pub fn group(vault: VaultId, gid: u32) -> Object {
        Object {
            vault,
            kind: KeyKind::Group,
            id: u64::from(gid),
        }
    }
}

/// Reads the plain fields of a signed wrap: whom to verify it with comes from here.
pub fn signed_wrap_header(wrapped: &[u8]) -> Result<SignedWrapHeader, UnwrapError> {
    SignedWrapHeader::parse(wrapped).map_err(|e| match e {
        WrapHeaderError::Malformed(what) => UnwrapError::Malformed(what),
        WrapHeaderError::UnsupportedVersion(v) => UnwrapError::UnsupportedVersion(v),
    })
}

/// Seals `keys` (each `object.kind.key_bytes()` long, newest first, the newest of `epoch`)
/// to `recipient` and signs the result as `wrapper`.
/// `prepared`, when given, must be a version 2 preparation for `recipient`'s key.
fn seal_keys(
    keys: &[u8],
    object: Object,
    (recipient, prepared): (Recipient, Option<PreparedWrap>),
    (epoch, commitment, (manifests, sealed_xattrs)): (u32, [u8; COMMITMENT_BYTES], (bool, bool)),
    wrapper: Wrapper<'_>,
) -> Result<Vec<u8>, WrapError> {
    let count = keys.len() / object.kind.key_bytes();
    assert!(
        (1..=V2_KEYS_MAX).contains(&count) && keys.len().is_multiple_of(object.kind.key_bytes()),
        "a signed wrap carries 1 to {V2_KEYS_MAX} whole keys"
    );
    let header = SignedWrapHeader {
        kind: object.kind,
        vault: object.vault,
        object: object.id,
        recipient: recipient.principal,
        recipient_key: recipient.wrapping_key,
        keys: count as u8,
        epoch,
        wrapper: wrapper.uid,
        commitment,
        manifests,
        sealed_xattrs,
    };
    let prepared = match prepared {
        Some(prepared) => prepared,
        None => crate::wrap::prepare(&recipient.wrapping_key, HPKE_INFO, 2)?,
    };
    assert!(
        prepared.version == 2 && prepared.recipient == recipient.wrapping_key,
        "a wrap prepared for this recipient and version 2"
    );
    let (encapped, mut context) = (prepared.encapped, prepared.context);
    let mut out = vec![0u8; header.wrapped_bytes()];
    out[..V2_HEADER_BYTES].copy_from_slice(&header.encode());
    out[V2_HEADER_BYTES..V2_HEADER_BYTES + ENC_BYTES].copy_from_slice(&encapped.to_bytes());
    let sealed_at = V2_HEADER_BYTES + ENC_BYTES;
    let tag_at = sealed_at + keys.len();
    let (aad, rest) = out.split_at_mut(V2_HEADER_BYTES);
    let sealed = &mut rest[ENC_BYTES..ENC_BYTES + keys.len()];
    let tag = context
        .seal_inout_detached(
            hpke::inout::InOutBuf::new(keys, sealed).expect("equal lengths"),
            aad,
        )
        .expect("the first seal of a fresh context cannot fail");
    out[tag_at..tag_at + TAG_BYTES].copy_from_slice(&tag.to_bytes());
    let signature_at = header.signature_at();
    let signature = wrapper.identity.sign(V2_DOMAIN, &out[..signature_at]);
    out[signature_at..].copy_from_slice(&signature);
    Ok(out)
}

/// Checks a signed wrap's signature by `signer` (the wrapper its header names, whose key the
/// caller verified) and that it is for `object` and for `me`, then opens it.
fn open_keys(
    wrapped: &[u8],
    me: &Identity,
    object: Object,
    signer: &PublicIdentity,
) -> Result<(SignedWrapHeader, Zeroizing<Vec<u8>>), UnwrapError> {
    let header = signed_wrap_header(wrapped)?;
    let signature_at = header.signature_at();
    let signature: [u8; 64] = wrapped[signature_at..]
        .try_into()
        .expect("the header checked the length");
    signer
        .verify(V2_DOMAIN, &wrapped[..signature_at], &signature)
        .map_err(|_| UnwrapError::BadSignature)?;
    if header.recipient_key != me.public().wrapping {
        return Err(UnwrapError::NotForMe);
    }
    if header.vault != object.vault || header.kind != object.kind || header.object != object.id {
        return Err(UnwrapError::WrongContext);
    }
    let secret = Zeroizing::new(*me.wrapping_secret());
    let my_key = <KemSuite as Kem>::PrivateKey::from_bytes(&secret[..])
        .map_err(|_| UnwrapError::Malformed("private key"))?;
    let sealed_at = V2_HEADER_BYTES + ENC_BYTES;
    let encapped = <KemSuite as Kem>::EncappedKey::from_bytes(&wrapped[V2_HEADER_BYTES..sealed_at])
        .map_err(|_| UnwrapError::Malformed("encapsulated key"))?;
    let tag_at = signature_at - TAG_BYTES;
    let tag = AeadTag::<AesGcm256>::from_bytes(&wrapped[tag_at..signature_at])
        .map_err(|_| UnwrapError::Malformed("tag"))?;
    let mut keys = Zeroizing::new(vec![0u8; tag_at - sealed_at]);
    hpke::single_shot_open_inout_detached::<AesGcm256, HkdfSha256, KemSuite>(
        &OpModeR::Base,
        &my_key,
        &encapped,
        HPKE_INFO,
        hpke::inout::InOutBuf::new(&wrapped[sealed_at..tag_at], &mut keys[..])
            .expect("equal lengths"),
        &wrapped[..V2_HEADER_BYTES],
        &tag,
    )
    .map_err(|_| UnwrapError::AuthenticationFailed)?;
    Ok((header, keys))
}

/// A file's data keys: the newest (which seals every new chunk) and the older ones its chunks
/// may still be sealed under, newest first. A chunk names its key by the key commitment in
/// its header.
pub struct FileKeys {
    epoch: u32,
    keys: Vec<DataKey>,
    ciphers: Vec<ChunkCipher>,
    /// Every commit of the file carries a manifest (`crate::manifest`): said in every wrap
    /// of these keys, under the wrapper's signature.
    manifests: bool,
    /// The file's extended attribute values are sealed under these keys (`crate::xattrs`):
    /// said in every wrap, under the wrapper's signature.
    sealed_xattrs: bool,
}

impl std::fmt::Debug for FileKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FileKeys(epoch {}, {} keys)",
            self.epoch,
            self.keys.len()
        )
    }
}

impl FileKeys {
    /// A new file's keys: one fresh key, epoch 1; every commit of the file carries a
    /// manifest.
    pub fn generate() -> FileKeys {
        FileKeys::from_keys(1, vec![DataKey::generate()], true)
    }

    /// Keys for a file whose one key is `key` (epoch 1): a file of the unsigned format.
    pub fn single(key: DataKey) -> FileKeys {
        FileKeys::from_keys(1, vec![key], false)
    }

    fn from_keys(epoch: u32, keys: Vec<DataKey>, manifests: bool) -> FileKeys {
        let ciphers = keys.iter().map(DataKey::chunk_cipher).collect();
        FileKeys {
            epoch,
            keys,
            ciphers,
            manifests,
            sealed_xattrs: false,
        }
    }

    /// Whether every commit of the file carries a manifest, as its wraps say: a file without
    /// one must then be empty.
    pub fn manifests(&self) -> bool {
        self.manifests
    }

    /// These keys with the manifest flag set or cleared: set only where every commit of the
    /// file from now on carries a manifest and the file has one (or is empty).
    pub fn with_manifests(mut self, manifests: bool) -> FileKeys {
        self.manifests = manifests;
        self
    }

    /// Whether the file's extended attribute values are sealed under these keys, as its
    /// wraps say: a reader then refuses one that is not.
    pub fn sealed_xattrs(&self) -> bool {
        self.sealed_xattrs
    }

    /// These keys with the sealed-xattrs flag set or cleared.
    pub fn with_sealed_xattrs(mut self, sealed: bool) -> FileKeys {
        self.sealed_xattrs = sealed;
        self
    }

    /// A new key for what is written from now on, the older ones kept for the chunks sealed
    /// under them; none when the file already has [`V2_KEYS_MAX`] keys (re-seal it first).
    pub fn rotated(&self) -> Option<FileKeys> {
        if self.keys.len() >= V2_KEYS_MAX {
            return None;
        }
        let mut keys = vec![DataKey::generate()];
        keys.extend(self.keys.iter().cloned());
        let rotated = FileKeys::from_keys(self.epoch.checked_add(1)?, keys, self.manifests);
        Some(rotated.with_sealed_xattrs(self.sealed_xattrs))
    }

    /// The name keys of directory `dir` whose keys these are: from its oldest key, so that
    /// its names stay where they are across key epochs (docs/format.md section 5.6).
    pub fn name_keys(&self, vault: VaultId, dir: FileId) -> crate::NameKeys {
        let oldest = self.keys.last().expect("a key list is never empty");
        crate::NameKeys::derive(oldest, vault, dir)
    }

    /// Only the newest key: once no chunk is sealed under an older one.
    pub fn newest_only(&self) -> FileKeys {
        FileKeys::from_keys(self.epoch, vec![self.keys[0].clone()], self.manifests)
            .with_sealed_xattrs(self.sealed_xattrs)
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub fn count(&self) -> usize {
        self.keys.len()
    }

    /// The cipher that seals every new chunk.
    pub fn newest(&self) -> &ChunkCipher {
        &self.ciphers[0]
    }

    /// The cipher of the key a sealed chunk names (its header's key commitment); the newest
    /// when none matches, so that opening fails with "sealed under a different key".
    pub fn for_sealed(&self, sealed: &[u8]) -> &ChunkCipher {
        let at = format::limits::ENVELOPE_BYTES - COMMITMENT_BYTES;
        sealed
            .get(at..at + COMMITMENT_BYTES)
            .and_then(|named| self.ciphers.iter().find(|c| c.commitment()[..] == *named))
            .unwrap_or(&self.ciphers[0])
    }

    /// The cipher of the key with `commitment`, if the file has it.
    pub fn with_commitment(&self, commitment: &[u8]) -> Option<&ChunkCipher> {
        self.ciphers
            .iter()
            .find(|c| c.commitment()[..] == *commitment)
    }

    /// The key with `commitment`, if the file has it.
    pub(crate) fn position_of(&self, commitment: &[u8]) -> Option<usize> {
        self.ciphers
            .iter()
            .position(|c| c.commitment()[..] == *commitment)
    }

    /// The key at `at` (0: the newest).
    pub(crate) fn key_at(&self, at: usize) -> &DataKey {
        &self.keys[at]
    }

    /// The manifest subkey of the key at `at` (0: the newest).
    pub(crate) fn manifest_key(&self, at: usize) -> Zeroizing<[u8; 32]> {
        self.keys[at].manifest_key()
    }

    /// Whether a sealed chunk names the newest key.
    pub fn sealed_under_newest(&self, sealed: &[u8]) -> bool {
        let at = format::limits::ENVELOPE_BYTES - COMMITMENT_BYTES;
        sealed.get(at..at + COMMITMENT_BYTES) == Some(&self.newest().commitment()[..])
    }

    fn payload(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(32 * self.keys.len()));
        for key in &self.keys {
            out.extend_from_slice(key.as_bytes());
        }
        out
    }

    /// Wraps these keys for file `ino` to `recipient`, signed by `wrapper`.
    pub fn wrap(
        &self,
        vault: VaultId,
        ino: u64,
        recipient: Recipient,
        wrapper: Wrapper<'_>,
    ) -> Result<Vec<u8>, WrapError> {
        self.wrap_with(vault, ino, (recipient, None), wrapper)
    }

    /// As [`FileKeys::wrap`], with the recipient's half made ahead
    /// ([`crate::prepare_signed_wrap`]).
    pub fn wrap_prepared(
        &self,
        vault: VaultId,
        ino: u64,
        (recipient, prepared): (Recipient, PreparedWrap),
        wrapper: Wrapper<'_>,
    ) -> Result<Vec<u8>, WrapError> {
        self.wrap_with(vault, ino, (recipient, Some(prepared)), wrapper)
    }

    fn wrap_with(
        &self,
        vault: VaultId,
        ino: u64,
        to: (Recipient, Option<PreparedWrap>),
        wrapper: Wrapper<'_>,
    ) -> Result<Vec<u8>, WrapError> {
        seal_keys(
            &self.payload(),
            Object::file(vault, ino),
            to,
            (
                self.epoch,
                *self.newest().commitment(),
                (self.manifests, self.sealed_xattrs),
            ),
            wrapper,
        )
    }

    /// Opens a signed wrap of file `ino`'s keys addressed to `me`, signed by `signer`.
    pub fn unwrap(
        wrapped: &[u8],
        me: &Identity,
        vault: VaultId,
        ino: u64,
        signer: &PublicIdentity,
    ) -> Result<FileKeys, UnwrapError> {
        let (header, payload) = open_keys(wrapped, me, Object::file(vault, ino), signer)?;
        let keys: Vec<DataKey> = payload
            .chunks(32)
            .map(|k| DataKey::from_bytes(k.try_into().expect("32 bytes")))
            .collect();
        let keys = FileKeys::from_keys(header.epoch, keys, header.manifests)
            .with_sealed_xattrs(header.sealed_xattrs);
        if keys.newest().commitment() != &header.commitment {
            return Err(UnwrapError::Malformed(
                "the commitment does not match the key",
            ));
        }
        Ok(keys)
    }
}

/// A group's key pairs: the newest (which new file keys are wrapped to) and the older ones
/// that files not re-keyed since may still be wrapped to, newest first.
pub struct GroupKeys {
    epoch: u32,
    identities: Vec<Identity>,
}

impl std::fmt::Debug for GroupKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GroupKeys(epoch {}, {} pairs)",
            self.epoch,
            self.identities.len()
        )
    }
}

impl GroupKeys {
    /// A new group's first key pair.
    pub fn generate() -> GroupKeys {
        GroupKeys {
            epoch: 1,
            identities: vec![Identity::generate()],
        }
    }

    /// A new key pair for the next epoch, the older ones kept; none at [`V2_KEYS_MAX`].
    pub fn rotated(self) -> Option<GroupKeys> {
        if self.identities.len() >= V2_KEYS_MAX {
            return None;
        }
        let mut identities = vec![Identity::generate()];
        identities.extend(self.identities);
        Some(GroupKeys {
            epoch: self.epoch.checked_add(1)?,
            identities,
        })
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub fn newest(&self) -> &Identity {
        &self.identities[0]
    }

    /// The key pair whose X25519 public key is `wrapping_key`.
    pub fn with_wrapping_key(&self, wrapping_key: &[u8; 32]) -> Option<&Identity> {
        self.identities
            .iter()
            .find(|i| i.public().wrapping == *wrapping_key)
    }

    pub fn wrap(
        &self,
        vault: VaultId,
        gid: u32,
        recipient: Recipient,
        wrapper: Wrapper<'_>,
    ) -> Result<Vec<u8>, WrapError> {
        let mut payload = Zeroizing::new(Vec::with_capacity(64 * self.identities.len()));
        for identity in &self.identities {
            payload.extend_from_slice(&*identity.signing_seed());
            payload.extend_from_slice(identity.wrapping_secret());
        }
        seal_keys(
            &payload,
            Object::group(vault, gid),
            (recipient, None),
            (self.epoch, [0; COMMITMENT_BYTES], (false, false)),
            wrapper,
        )
    }

    pub fn unwrap(
        wrapped: &[u8],
        me: &Identity,
        vault: VaultId,
        gid: u32,
        signer: &PublicIdentity,
    ) -> Result<GroupKeys, UnwrapError> {
        let (header, payload) = open_keys(wrapped, me, Object::group(vault, gid), signer)?;
        let identities = payload
            .chunks(64)
            .map(|pair| {
                Identity::from_secrets(
                    pair[..32].try_into().expect("32 bytes"),
                    pair[32..].try_into().expect("32 bytes"),
                )
            })
            .collect();
        Ok(GroupKeys {
            epoch: header.epoch,
            identities,
        })
    }
}
