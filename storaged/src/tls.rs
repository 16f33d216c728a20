//! The daemon's TLS identity: a self-signed certificate made on first start, kept in the
//! data dir, and pinned by clients through its SHA-256 fingerprint.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use identity::CertificateFingerprint;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The certificate and key (PEM) and the fingerprint clients pin.
#[derive(Debug)]
pub struct TlsIdentity {
    pub cert_pem: String,
    pub key_pem: String,
    pub fingerprint: CertificateFingerprint,
}

/// Loads `<dir>/cert.pem` and `<dir>/key.pem`, creating them on first start.
pub fn load_or_create(dir: &Path) -> anyhow::Result<TlsIdentity> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if !cert_path.exists() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        let names = vec!["vault-storaged".to_string(), "localhost".to_string(), host];
        let made = rcgen::generate_simple_self_signed(names).context("making a TLS certificate")?;
        write_private(&key_path, made.signing_key.serialize_pem().as_bytes())?;
        write_private(&cert_path, made.cert.pem().as_bytes())?;
    }
    let cert_pem = fs::read_to_string(&cert_path)
        .with_context(|| format!("reading {}", cert_path.display()))?;
    let key_pem =
        fs::read_to_string(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .with_context(|| format!("{} is not a PEM certificate", cert_path.display()))?;
    Ok(TlsIdentity {
        fingerprint: CertificateFingerprint::of_certificate(&der),
        cert_pem,
        key_pem,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
