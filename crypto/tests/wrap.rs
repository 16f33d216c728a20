//! Key wrapping: a wrapped key opens only for its recipient, vault, object and kind.

use crypto::{
    DataKey, FileKeys, Recipient, UnwrapError, WRAPPED_KEY_BYTES, WrapContext, WrapError, WrapKind,
    Wrapper, prepare_signed_wrap, prepare_wrap, unwrap, wrap, wrap_prepared,
};
use format::acl::Principal;
use format::ids::VaultId;
use identity::Identity;

fn context(object: u64) -> WrapContext {
    WrapContext {
        vault: VaultId([1; 16]),
        kind: WrapKind::FileKey,
        object,
    }
}

#[test]
fn wrapped_key_opens_for_its_recipient() {
    let alice = Identity::generate();
    let key = DataKey::generate();
    let wrapped = wrap(&key, &alice.public(), &context(42)).expect("wrap");
    assert_eq!(wrapped.len(), WRAPPED_KEY_BYTES);
    let unwrapped = unwrap(&wrapped, &alice, &context(42)).expect("unwrap");
    assert_eq!(unwrapped.as_bytes(), key.as_bytes());
    // Wrapping is randomised: the same key wraps to different bytes.
    assert_ne!(wrap(&key, &alice.public(), &context(42)), Ok(wrapped));
}

#[test]
fn a_wrap_prepared_ahead_opens_for_its_recipient_only() {
    let alice = Identity::generate();
    let bob = Identity::generate();
    let key = DataKey::generate();
    let prepared = [(); 2].map(|()| prepare_wrap(&alice.public()).expect("prepare"));
    assert!(prepared[0].is_for(&alice.public()));
    assert!(!prepared[0].is_for(&bob.public()));
    let [first, second] = prepared;
    let one = wrap_prepared(first, &key, &context(7));
    let two = wrap_prepared(second, &key, &context(8));
    assert_eq!(one.len(), WRAPPED_KEY_BYTES);
    // Each preparation is a fresh ephemeral key: no two wraps share one.
    assert_ne!(one[60..92], two[60..92]);
    for (wrapped, object) in [(&one, 7), (&two, 8)] {
        let unwrapped = unwrap(wrapped, &alice, &context(object)).expect("unwrap");
        assert_eq!(unwrapped.as_bytes(), key.as_bytes());
        assert_eq!(
            unwrap(wrapped, &bob, &context(object)).err(),
            Some(UnwrapError::NotForMe)
        );
    }
    assert_eq!(
        unwrap(&one, &alice, &context(8)).err(),
        Some(UnwrapError::WrongContext)
    );
}

#[test]
fn wrapped_key_cannot_be_repointed() {
    let alice = Identity::generate();
    let bob = Identity::generate();
    let wrapped = wrap(&DataKey::generate(), &alice.public(), &context(42)).expect("wrap");
    assert_eq!(
        unwrap(&wrapped, &bob, &context(42)).map(|_| ()),
        Err(UnwrapError::NotForMe)
    );
    assert_eq!(
        unwrap(&wrapped, &alice, &context(43)).map(|_| ()),
        Err(UnwrapError::WrongContext)
    );
    let drive = WrapContext {
        kind: WrapKind::DriveKey,
        ..context(42)
    };
    assert_eq!(
        unwrap(&wrapped, &alice, &drive).map(|_| ()),
        Err(UnwrapError::WrongContext)
    );
    let other_vault = WrapContext {
        vault: VaultId([2; 16]),
        ..context(42)
    };
    assert_eq!(
        unwrap(&wrapped, &alice, &other_vault).map(|_| ()),
        Err(UnwrapError::WrongContext)
    );

    // Editing the object ID in the blob to match does not help: it is authenticated.
    let mut edited = wrapped.clone();
    edited[20..28].copy_from_slice(&43u64.to_le_bytes());
    assert_eq!(
        unwrap(&edited, &alice, &context(43)).map(|_| ()),
        Err(UnwrapError::AuthenticationFailed)
    );
}

#[test]
fn damaged_wrapped_keys_are_refused() {
    let alice = Identity::generate();
    let wrapped = wrap(&DataKey::generate(), &alice.public(), &context(7)).expect("wrap");
    for at in [60, 91, 92, 123, 124, 139] {
        let mut flipped = wrapped.clone();
        flipped[at] ^= 0x80;
        assert_eq!(
            unwrap(&flipped, &alice, &context(7)).map(|_| ()),
            Err(UnwrapError::AuthenticationFailed),
            "flip at {at}"
        );
    }
    assert_eq!(
        unwrap(&wrapped[..100], &alice, &context(7)).map(|_| ()),
        Err(UnwrapError::Malformed("wrong length"))
    );
    let mut bad_version = wrapped.clone();
    bad_version[2] = 9;
    assert_eq!(
        unwrap(&bad_version, &alice, &context(7)).map(|_| ()),
        Err(UnwrapError::UnsupportedVersion(9))
    );
}

/// The X25519 u-coordinates of small order (on the curve and its twist), as libsodium lists
/// them, and each again with the top bit set (X25519 ignores it).
fn small_order_points() -> Vec<[u8; 32]> {
    let low = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ];
    let mut points = Vec::new();
    for hex in low {
        let point: [u8; 32] = hex::decode(hex).expect("hex").try_into().expect("32 bytes");
        let mut high = point;
        high[31] |= 0x80;
        points.extend([point, high]);
    }
    points
}

/// A registered key of small order makes every wrap to it readable by anyone: wrapping to it,
/// in either wrap version, is an error (not a panic), and `identity` names every such point.
#[test]
fn wrapping_to_every_small_order_point_is_an_error() {
    let key = DataKey::generate();
    let alice = Identity::generate();
    let wrapper = Wrapper {
        uid: 1000,
        identity: &alice,
    };
    for point in small_order_points() {
        let shown = hex::encode(point);
        assert!(identity::is_low_order_wrapping_key(&point), "{shown}");
        let public = identity::PublicIdentity {
            signing: alice.public().signing,
            wrapping: point,
        };
        let low_order = Some(WrapError::LowOrderRecipient);
        assert_eq!(wrap(&key, &public, &context(1)).err(), low_order, "{shown}");
        assert_eq!(prepare_wrap(&public).err().map(|_| ()), Some(()), "{shown}");
        assert_eq!(
            prepare_signed_wrap(&public).err().map(|_| ()),
            Some(()),
            "{shown}"
        );
        let recipient = Recipient {
            principal: Principal::User(1001),
            wrapping_key: point,
        };
        let signed = FileKeys::generate().wrap(VaultId([1; 16]), 1, recipient, wrapper);
        assert_eq!(signed.err(), low_order, "{shown}");
    }
    // An ordinary key wraps.
    assert!(!identity::is_low_order_wrapping_key(
        &alice.public().wrapping
    ));
    assert!(wrap(&key, &alice.public(), &context(1)).is_ok());
}
