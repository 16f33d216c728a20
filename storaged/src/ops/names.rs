//! What a name may be: the checks every entry-creating operation applies first.

use super::OpError;
use format::names::{SEALED_NAME_OVERHEAD, SEALED_TARGET_OVERHEAD, is_sealed, sealed_name_bytes};
use proto::limits::{NAME_BYTES_MAX, PATH_BYTES_MAX};

/// A name as the audit log records it: as it is when plaintext, in hex when sealed.
pub fn audit_name(name: &[u8]) -> String {
    if is_sealed(name) {
        format!("sealed:{}", hex::encode(name))
    } else {
        String::from_utf8_lossy(name).into_owned()
    }
}

/// A directory entry name: 1..=255 bytes, not `.` or `..`, no `/` and no NUL; or a sealed
/// name (docs/format.md section 5.6): a NUL, then AES-SIV of such a name (any bytes).
pub fn check_name(name: &[u8]) -> Result<(), OpError> {
    if is_sealed(name) {
        if name.len() <= SEALED_NAME_OVERHEAD {
            return Err(OpError::invalid("a sealed name too short to hold a name"));
        }
        if name.len() > sealed_name_bytes(NAME_BYTES_MAX) {
            return Err(OpError::NameTooLong);
        }
        return Ok(());
    }
    if name.is_empty() {
        return Err(OpError::invalid("empty name"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(OpError::NameTooLong);
    }
    if name == b"." || name == b".." {
        return Err(OpError::invalid("the names . and .. are reserved"));
    }
    if name.contains(&b'/') {
        return Err(OpError::invalid("a name may not contain /"));
    }
    if name.contains(&0) {
        return Err(OpError::invalid("a name may not contain NUL"));
    }
    Ok(())
}

/// A symlink target: 1..=4096 bytes, no NUL; or a sealed one (a NUL, the sealing
/// directory, then AES-SIV of such a target).
pub fn check_target(target: &[u8]) -> Result<(), OpError> {
    if is_sealed(target) {
        if target.len() <= SEALED_TARGET_OVERHEAD {
            return Err(OpError::invalid(
                "a sealed target too short to hold a target",
            ));
        }
        if target.len() > SEALED_TARGET_OVERHEAD + PATH_BYTES_MAX {
            return Err(OpError::NameTooLong);
        }
        return Ok(());
    }
    if target.is_empty() {
        return Err(OpError::invalid("empty symlink target"));
    }
    if target.len() > PATH_BYTES_MAX {
        return Err(OpError::NameTooLong);
    }
    if target.contains(&0) {
        return Err(OpError::invalid("a symlink target may not contain NUL"));
    }
    Ok(())
}

/// A user or group name: 1..=64 of `a-z 0-9 . _ -`, starting with a letter.
pub fn check_principal_name(name: &str) -> Result<(), OpError> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(OpError::invalid(format!(
            "name {name:?}: use 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(
                matches!(check_name(bad), Err(OpError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            check_name(&[b'x'; 256]),
            Err(OpError::NameTooLong)
        ));
        assert!(check_name(&[b'x'; 255]).is_ok());
        assert!(check_name(b"...").is_ok());
        assert!(check_name("naïve".as_bytes()).is_ok());
        let mut sealed = vec![0u8; SEALED_NAME_OVERHEAD + 1];
        sealed[5] = b'/';
        assert!(check_name(&sealed).is_ok(), "a sealed name holds any bytes");
        assert!(matches!(
            check_name(&sealed[..SEALED_NAME_OVERHEAD]),
            Err(OpError::Invalid(_))
        ));
        assert!(matches!(
            check_name(&vec![0u8; sealed_name_bytes(256)]),
            Err(OpError::NameTooLong)
        ));
        assert!(check_name(&vec![0u8; sealed_name_bytes(255)]).is_ok());
    }

    #[test]
    fn principal_names() {
        assert!(check_principal_name("alice").is_ok());
        assert!(check_principal_name("lab-2.x_y").is_ok());
        for bad in ["", "Alice", "1abc", "a b", "a/b", &"a".repeat(65)] {
            assert!(check_principal_name(bad).is_err(), "{bad}");
        }
    }
}
