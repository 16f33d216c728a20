//! Fingerprints: SHA-256 digests that name something public, for people to compare and for
//! clients to pin. One type serves both kinds the vault has: a user's or the administrator's
//! key pair (cut to 16 bytes, read aloud in groups of four hex digits) and the storage daemon's
//! TLS certificate (the whole 32 bytes, shown as `sha256:HEX` like other TLS tools show it).

use std::fmt;

use sha2::{Digest, Sha256};

use crate::FINGERPRINT_BYTES;

/// A SHA-256 digest, whole or cut to its first `N` bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint<const N: usize = FINGERPRINT_BYTES>(pub [u8; N]);

/// The fingerprint a client pins a storage daemon's self-signed TLS certificate by.
pub type CertificateFingerprint = Fingerprint<32>;

impl<const N: usize> Fingerprint<N> {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses either display form: hex digits, with spaces or colons anywhere between them,
    /// after an optional `sha256:`.
    pub fn from_hex(text: &str) -> Option<Fingerprint<N>> {
        let text = text.trim();
        let compact: String = text
            .strip_prefix("sha256:")
            .unwrap_or(text)
            .chars()
            .filter(|c| !c.is_whitespace() && *c != ':')
            .collect();
        let mut out = [0u8; N];
        hex::decode_to_slice(compact, &mut out).ok()?;
        Some(Fingerprint(out))
    }
}

impl CertificateFingerprint {
    /// The fingerprint of a certificate in DER.
    pub fn of_certificate(der: &[u8]) -> CertificateFingerprint {
        Fingerprint(Sha256::digest(der).into())
    }
}

/// A whole digest as `sha256:HEX`; a cut one in groups of four hex digits, as people read
/// them aloud.
impl<const N: usize> fmt::Display for Fingerprint<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        if N == 32 {
            return write!(f, "sha256:{hex}");
        }
        for (i, group) in hex.as_bytes().chunks(4).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl<const N: usize> fmt::Debug for Fingerprint<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    #[test]
    fn a_key_fingerprint_round_trips_through_its_display_form() {
        let fingerprint = Identity::generate().public().fingerprint();
        let shown = fingerprint.to_string();
        assert_eq!(shown.len(), 32 + 7);
        assert_eq!(Fingerprint::from_hex(&shown), Some(fingerprint));
    }

    #[test]
    fn a_certificate_fingerprint_reads_in_every_common_notation() {
        let fingerprint = CertificateFingerprint::of_certificate(b"a certificate");
        let shown = fingerprint.to_string();
        assert!(shown.starts_with("sha256:") && shown.len() == 7 + 64);
        let colons = fingerprint
            .0
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        for text in [shown.as_str(), &shown[7..], &colons] {
            assert_eq!(CertificateFingerprint::from_hex(text), Some(fingerprint));
        }
        assert_eq!(CertificateFingerprint::from_hex(&shown[..40]), None);
    }
}
