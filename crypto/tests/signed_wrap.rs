//! Signed wraps: a wrap opens only for its recipient and object, and only with the key of the
//! user who signed it; a file's older keys still open the chunks sealed under them.

use crypto::{ChunkContext, FileKeys, GroupKeys, Recipient, UnwrapError, Wrapper};
use format::acl::Principal;
use format::ids::{ChunkIndex, FileId, Generation, VaultId};
use identity::Identity;

const VAULT: VaultId = VaultId([9; 16]);

fn to(principal: Principal, who: &Identity) -> Recipient {
    Recipient {
        principal,
        wrapping_key: who.public().wrapping,
    }
}

#[test]
fn a_signed_wrap_opens_only_with_its_signers_key_and_for_its_recipient() {
    let (alice, bob, mallory) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let keys = FileKeys::generate();
    let by_alice = Wrapper {
        uid: 1000,
        identity: &alice,
    };
    let wrapped = keys
        .wrap(VAULT, 42, to(Principal::User(1001), &bob), by_alice)
        .expect("wrap");
    assert_eq!(wrapped.len(), 236);
    let header = crypto::signed_wrap_header(&wrapped).expect("header");
    assert_eq!((header.wrapper, header.epoch, header.keys), (1000, 1, 1));
    let opened = FileKeys::unwrap(&wrapped, &bob, VAULT, 42, &alice.public()).expect("opens");
    assert_eq!(opened.newest().commitment(), keys.newest().commitment());
    // The storage administrator's own wrap, signed by a key it made: refused.
    let forged = keys
        .wrap(
            VAULT,
            42,
            to(Principal::User(1001), &bob),
            Wrapper {
                uid: 1000,
                identity: &mallory,
            },
        )
        .expect("wrap");
    let refused = FileKeys::unwrap(&forged, &bob, VAULT, 42, &alice.public());
    assert_eq!(refused.err(), Some(UnwrapError::BadSignature));
    // Another recipient, another file, a flipped bit anywhere.
    let err = |w: &[u8], ino| FileKeys::unwrap(w, &bob, VAULT, ino, &alice.public()).err();
    assert_eq!(err(&wrapped, 43), Some(UnwrapError::WrongContext));
    let not_mine = FileKeys::unwrap(&wrapped, &mallory, VAULT, 42, &alice.public());
    assert_eq!(not_mine.err(), Some(UnwrapError::NotForMe));
    for at in [3, 30, 70, 100, 130, wrapped.len() - 1] {
        let mut flipped = wrapped.clone();
        flipped[at] ^= 1;
        assert!(err(&flipped, 42).is_some(), "a flip at {at} went unnoticed");
    }
}

#[test]
fn rotated_keys_seal_with_the_newest_and_open_every_older_chunk() {
    let first = FileKeys::generate();
    let context = |generation| ChunkContext {
        vault: VAULT,
        file: FileId(5),
        index: ChunkIndex(0),
        generation: Generation(generation),
        last: true,
    };
    let old_chunk = crypto::seal(first.newest(), &context(1), b"before").expect("seal");
    let second = first.rotated().expect("room for a key");
    assert_eq!((second.epoch(), second.count()), (2, 2));
    let new_chunk = crypto::seal(second.newest(), &context(2), b"after").expect("seal");
    assert!(second.sealed_under_newest(&new_chunk) && !second.sealed_under_newest(&old_chunk));
    let open = |keys: &FileKeys, sealed: &[u8], g| {
        crypto::open(keys.for_sealed(sealed), &context(g), sealed)
    };
    assert_eq!(open(&second, &old_chunk, 1).expect("old opens"), b"before");
    assert_eq!(open(&second, &new_chunk, 2).expect("new opens"), b"after");
    // The old keys alone open nothing sealed after the rotation.
    assert_eq!(
        open(&first, &new_chunk, 2).err(),
        Some(crypto::OpenError::KeyMismatch)
    );
    // Through a wrap: every key comes back.
    let me = Identity::generate();
    let wrapper = Wrapper {
        uid: 7,
        identity: &me,
    };
    let wrapped = second
        .wrap(VAULT, 5, to(Principal::User(7), &me), wrapper)
        .expect("wrap");
    let back = FileKeys::unwrap(&wrapped, &me, VAULT, 5, &me.public()).expect("opens");
    assert_eq!(open(&back, &old_chunk, 1).expect("old opens"), b"before");
    assert_eq!(back.newest_only().count(), 1);
}

#[test]
fn group_keys_travel_whole_and_find_the_pair_a_key_was_wrapped_to() {
    let (admin, member) = (Identity::generate(), Identity::generate());
    let first = GroupKeys::generate();
    let old_public = first.newest().public();
    let second = first.rotated().expect("room");
    let wrapper = Wrapper {
        uid: 0,
        identity: &admin,
    };
    let wrapped = second
        .wrap(VAULT, 1000, to(Principal::User(1001), &member), wrapper)
        .expect("wrap");
    let back = GroupKeys::unwrap(&wrapped, &member, VAULT, 1000, &admin.public()).expect("opens");
    assert_eq!(back.epoch(), 2);
    assert_eq!(back.newest().public(), second.newest().public());
    let old = back
        .with_wrapping_key(&old_public.wrapping)
        .expect("the old pair");
    assert_eq!(old.public(), old_public);
    // A file key wrapped to the old group key opens with that pair.
    let keys = FileKeys::generate();
    let by = Wrapper {
        uid: 1001,
        identity: &member,
    };
    let to_group = keys
        .wrap(VAULT, 8, to(Principal::Group(1000), old), by)
        .expect("wrap");
    assert!(FileKeys::unwrap(&to_group, old, VAULT, 8, &member.public()).is_ok());
    assert!(FileKeys::unwrap(&to_group, back.newest(), VAULT, 8, &member.public()).is_err());
}
