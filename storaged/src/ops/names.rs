//! What a name may be: the checks every entry-creating operation applies first.

use super::OpError;
use proto::limits::{NAME_BYTES_MAX, PATH_BYTES_MAX};

/// A directory entry name: 1..=255 bytes, not `.` or `..`, no `/` and no NUL.
pub fn check_name(name: &[u8]) -> Result<(), OpError> {
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

/// A symlink target: 1..=4096 bytes, no NUL.
pub fn check_target(target: &[u8]) -> Result<(), OpError> {
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
