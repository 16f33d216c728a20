//! The site administrator's public key file (`admin.pub`): the text `vault-admin init` writes
//! into the daemon's data directory and `storaged serve` reads. One line with both public keys
//! in hex, then a comment with the fingerprint for people to compare.

use crate::{PUBLIC_KEY_BYTES, PublicIdentity};

/// The first word of the file: its kind and version.
const TAG: &str = "vault-admin-key v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminKeyError {
    #[error("not a site administrator public key file (it must start with `{TAG}`)")]
    NotAnAdminKey,
    #[error("its {0} key is not {PUBLIC_KEY_BYTES} bytes of hex")]
    BadKey(&'static str),
}

impl PublicIdentity {
    /// The text of an administrator public key file.
    pub fn to_admin_key_text(&self) -> String {
        format!(
            "{TAG} {} {}\n# fingerprint {}\n",
            hex::encode(self.signing),
            hex::encode(self.wrapping),
            self.fingerprint()
        )
    }

    /// Reads what [`PublicIdentity::to_admin_key_text`] wrote (the first line).
    pub fn from_admin_key_text(text: &str) -> Result<PublicIdentity, AdminKeyError> {
        let line = text.lines().next().unwrap_or_default();
        let fields: Vec<&str> = line
            .strip_prefix(TAG)
            .ok_or(AdminKeyError::NotAnAdminKey)?
            .split_whitespace()
            .collect();
        let [signing, wrapping] = fields.as_slice() else {
            return Err(AdminKeyError::NotAnAdminKey);
        };
        let parse = |hex_text: &str, which| {
            let mut out = [0u8; PUBLIC_KEY_BYTES];
            hex::decode_to_slice(hex_text, &mut out)
                .map(|()| out)
                .map_err(|_| AdminKeyError::BadKey(which))
        };
        Ok(PublicIdentity {
            signing: parse(signing, "signing")?,
            wrapping: parse(wrapping, "wrapping")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    #[test]
    fn the_admin_key_file_round_trips_and_refuses_other_text() {
        let public = Identity::generate().public();
        let text = public.to_admin_key_text();
        assert_eq!(PublicIdentity::from_admin_key_text(&text), Ok(public));
        assert_eq!(
            PublicIdentity::from_admin_key_text("ssh-ed25519 AAAA"),
            Err(AdminKeyError::NotAnAdminKey)
        );
        assert_eq!(
            PublicIdentity::from_admin_key_text(&text.replacen(
                &hex::encode(public.signing),
                "zz",
                1
            )),
            Err(AdminKeyError::BadKey("signing"))
        );
    }
}
