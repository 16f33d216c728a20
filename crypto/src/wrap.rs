//! Wrapping a data key to a recipient's X25519 public key: HPKE (RFC 9180) in base mode with
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and AES-256-GCM. The plain header (the HPKE
//! authenticated data) is laid out in `format::wrapped`; a wrapped key therefore cannot be
//! re-pointed at another vault, object, kind or recipient: it would fail to open.

use format::ids::VaultId;
use format::wrapped::{HEADER_BYTES, WrapHeader, WrapHeaderError};
pub use format::wrapped::{WRAPPED_KEY_BYTES, WrapKind};
use hpke::aead::{AeadTag, AesGcm256};
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use identity::{Identity, PublicIdentity};
use zeroize::Zeroizing;

use crate::keys::{DATA_KEY_BYTES, DataKey};

const AAD_END: usize = HEADER_BYTES;
const ENC_AT: usize = HEADER_BYTES;
const CIPHERTEXT_AT: usize = 92;
const TAG_AT: usize = 124;
const HPKE_INFO: &[u8] = b"vault/v1 key wrap";

type KemSuite = X25519HkdfSha256;

/// What a wrapped key is for: the wrapped blob binds all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrapContext {
    pub vault: VaultId,
    pub kind: WrapKind,
    pub object: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnwrapError {
    #[error("wrapped key is malformed: {0}")]
    Malformed(&'static str),
    #[error("wrapped key has version {0}, which this build does not know")]
    UnsupportedVersion(u8),
    #[error("wrapped key belongs to another vault, object or kind")]
    WrongContext,
    #[error("wrapped key is addressed to another recipient")]
    NotForMe,
    #[error("wrapped key failed authentication (corrupted or forged)")]
    AuthenticationFailed,
    #[error("wrapped key is not signed by the user it names as its wrapper")]
    BadSignature,
}

/// Why a key cannot be wrapped to a recipient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WrapError {
    #[error(
        "the recipient's wrapping key is a low-order X25519 point: a key wrapped to it would be readable by anyone"
    )]
    LowOrderRecipient,
}

/// The recipient-dependent half of a wrap, made ahead of time: a fresh ephemeral X25519 key
/// agreed with the recipient's key and the HPKE key schedule (nearly all of a wrap's cost).
/// It seals exactly one key: [`wrap_prepared`] consumes it, so an ephemeral key is never
/// used twice, and the result is byte for byte what [`wrap`] would have made.
pub struct PreparedWrap {
    pub(crate) recipient: [u8; 32],
    pub(crate) encapped: <KemSuite as Kem>::EncappedKey,
    pub(crate) context: hpke::aead::AeadCtxS<AesGcm256, HkdfSha256, KemSuite>,
    /// The wrapped key version it was set up for (their HPKE infos differ).
    pub(crate) version: u8,
}

impl std::fmt::Debug for PreparedWrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreparedWrap(to {})", hex::encode(&self.recipient[..8]))
    }
}

impl PreparedWrap {
    /// Whether this was prepared for `recipient`.
    pub fn is_for(&self, recipient: &PublicIdentity) -> bool {
        self.recipient == recipient.wrapping
    }
}

/// Prepares one wrap to `recipient` (see [`PreparedWrap`]).
pub fn prepare_wrap(recipient: &PublicIdentity) -> Result<PreparedWrap, WrapError> {
    prepare(&recipient.wrapping, HPKE_INFO, 1)
}

/// Prepares one signed wrap (version 2) to `recipient`, for [`crate::FileKeys::wrap_prepared`].
pub fn prepare_signed_wrap(recipient: &PublicIdentity) -> Result<PreparedWrap, WrapError> {
    prepare(&recipient.wrapping, crate::signed_wrap::HPKE_INFO, 2)
}

pub(crate) fn prepare(
    recipient: &[u8; 32],
    info: &[u8],
    version: u8,
) -> Result<PreparedWrap, WrapError> {
    // HPKE refuses an all-zero shared secret itself; the explicit check says why.
    if identity::is_low_order_wrapping_key(recipient) {
        return Err(WrapError::LowOrderRecipient);
    }
    let recipient_key = <KemSuite as Kem>::PublicKey::from_bytes(recipient)
        .map_err(|_| WrapError::LowOrderRecipient)?;
    let (encapped, context) =
        hpke::setup_sender::<AesGcm256, HkdfSha256, KemSuite>(&OpModeS::Base, &recipient_key, info)
            .map_err(|_| WrapError::LowOrderRecipient)?;
    Ok(PreparedWrap {
        recipient: *recipient,
        encapped,
        context,
        version,
    })
}

/// Wraps `key` to `recipient` for `context`.
pub fn wrap(
    key: &DataKey,
    recipient: &PublicIdentity,
    context: &WrapContext,
) -> Result<Vec<u8>, WrapError> {
    Ok(wrap_prepared(prepare_wrap(recipient)?, key, context))
}

/// Wraps `key` for `context` to the recipient `prepared` was made for.
pub fn wrap_prepared(mut prepared: PreparedWrap, key: &DataKey, context: &WrapContext) -> Vec<u8> {
    assert_eq!(prepared.version, 1, "a wrap prepared for version 1");
    let mut out = vec![0u8; WRAPPED_KEY_BYTES];
    out[..AAD_END].copy_from_slice(&header(context, &prepared.recipient).encode());
    let (aad, rest) = out.split_at_mut(AAD_END);
    let (enc, ciphertext) = rest.split_at_mut(CIPHERTEXT_AT - ENC_AT);
    let (encrypted, tag_out) = ciphertext.split_at_mut(DATA_KEY_BYTES);
    let tag = prepared
        .context
        .seal_inout_detached(
            hpke::inout::InOutBuf::new(key.as_bytes(), encrypted).expect("equal lengths"),
            aad,
        )
        .expect("the first seal of a fresh context cannot fail");
    enc.copy_from_slice(&prepared.encapped.to_bytes());
    tag_out.copy_from_slice(&tag.to_bytes());
    out
}

/// Unwraps a key wrapped to `me`, checking that it was wrapped for `expected`.
pub fn unwrap(
    wrapped: &[u8],
    me: &Identity,
    expected: &WrapContext,
) -> Result<DataKey, UnwrapError> {
    let found = WrapHeader::parse(wrapped).map_err(|e| match e {
        WrapHeaderError::Malformed(what) => UnwrapError::Malformed(what),
        WrapHeaderError::UnsupportedVersion(v) => UnwrapError::UnsupportedVersion(v),
    })?;
    let my_public = me.public().wrapping;
    if found.recipient != my_public {
        return Err(UnwrapError::NotForMe);
    }
    if found != header(expected, &my_public) {
        return Err(UnwrapError::WrongContext);
    }
    let secret = Zeroizing::new(*me.wrapping_secret());
    let my_key = <KemSuite as Kem>::PrivateKey::from_bytes(&secret[..])
        .map_err(|_| UnwrapError::Malformed("private key"))?;
    let encapped = <KemSuite as Kem>::EncappedKey::from_bytes(&wrapped[ENC_AT..CIPHERTEXT_AT])
        .map_err(|_| UnwrapError::Malformed("encapsulated key"))?;
    let tag = AeadTag::<AesGcm256>::from_bytes(&wrapped[TAG_AT..])
        .map_err(|_| UnwrapError::Malformed("tag"))?;
    let mut key = Zeroizing::new([0u8; DATA_KEY_BYTES]);
    hpke::single_shot_open_inout_detached::<AesGcm256, HkdfSha256, KemSuite>(
        &OpModeR::Base,
        &my_key,
        &encapped,
        HPKE_INFO,
        hpke::inout::InOutBuf::new(&wrapped[CIPHERTEXT_AT..TAG_AT], &mut key[..])
            .expect("equal lengths"),
        &wrapped[..AAD_END],
        &tag,
    )
    .map_err(|_| UnwrapError::AuthenticationFailed)?;
    Ok(DataKey::from_bytes(*key))
}

fn header(context: &WrapContext, recipient: &[u8; 32]) -> WrapHeader {
    WrapHeader {
        kind: context.kind,
        vault: context.vault,
        object: context.object,
        recipient: *recipient,
    }
}
