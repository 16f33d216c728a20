//! Key wrapping: a wrapped key opens only for its recipient, vault, object and kind.

use crypto::{
    DataKey, UnwrapError, WRAPPED_KEY_BYTES, WrapContext, WrapKind, prepare_wrap, unwrap, wrap,
    wrap_prepared,
};
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
    let wrapped = wrap(&key, &alice.public(), &context(42));
    assert_eq!(wrapped.len(), WRAPPED_KEY_BYTES);
    let unwrapped = unwrap(&wrapped, &alice, &context(42)).expect("unwrap");
    assert_eq!(unwrapped.as_bytes(), key.as_bytes());
    // Wrapping is randomised: the same key wraps to different bytes.
    assert_ne!(wrap(&key, &alice.public(), &context(42)), wrapped);
}

#[test]
fn a_wrap_prepared_ahead_opens_for_its_recipient_only() {
    let alice = Identity::generate();
    let bob = Identity::generate();
    let key = DataKey::generate();
    let prepared = [prepare_wrap(&alice.public()), prepare_wrap(&alice.public())];
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
    let wrapped = wrap(&DataKey::generate(), &alice.public(), &context(42));
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
    let wrapped = wrap(&DataKey::generate(), &alice.public(), &context(7));
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
