//! Manifests: only a holder of the file's key makes one a reader accepts, for that file.

use crypto::{FileKeys, ManifestOpenError, open_manifest, seal_manifest};
use format::ids::{ChunkIndex, FileId, Generation, VaultId};
use format::manifest::Manifest;

const VAULT: VaultId = VaultId([3; 16]);
const FILE: FileId = FileId(0x1234);

fn manifest(counter: u64) -> Manifest {
    let map = [
        (ChunkIndex(0), Generation(10)),
        (ChunkIndex(1), Generation(11)),
    ];
    Manifest {
        counter,
        ..Manifest::describing(VAULT, FILE, 9 << 20, map)
    }
}

#[test]
fn a_manifest_opens_under_its_files_keys_and_refuses_any_change() {
    let keys = FileKeys::generate();
    let sealed = seal_manifest(&keys, &manifest(4));
    let opened = open_manifest(&keys, VAULT, FILE, &sealed).expect("opens");
    assert_eq!((opened.counter, opened.epoch), (4, 1));
    // A later epoch still opens a manifest sealed under an earlier key it keeps.
    let rotated = keys.rotated().expect("room");
    assert!(open_manifest(&rotated, VAULT, FILE, &sealed).is_ok());
    for at in [0, 30, 50, 60, 80, 120, sealed.len() - 1] {
        let mut changed = sealed.clone();
        changed[at] ^= 1;
        assert!(
            open_manifest(&keys, VAULT, FILE, &changed).is_err(),
            "byte {at}"
        );
    }
    assert_eq!(
        open_manifest(&keys, VAULT, FileId(7), &sealed),
        Err(ManifestOpenError::WrongContext)
    );
    let other = FileKeys::generate();
    assert_eq!(
        open_manifest(&other, VAULT, FILE, &sealed),
        Err(ManifestOpenError::UnknownKey(1))
    );
}
