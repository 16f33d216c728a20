//! The vault's storage daemon: it stores metadata and ciphertext chunk files, authenticates
//! clients, enforces access control and writes the audit log.
//!
//! It must never be able to read data: it does not depend on the `crypto` crate, holds no
//! data key, and never sees a private key (the site administrator's stays in the
//! administrator's key file; storaged knows only its public half). It checks what it can
//! without keys: chunk lengths and headers, wrapped-key headers, signatures.

pub mod anchor;
pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod chunkstore;
pub mod config;
pub mod descriptors;
pub mod fsck;
pub mod gc;
pub mod leases;
pub mod login_failures;
pub mod meta;
pub mod metrics;
pub mod ops;
pub mod private;
pub mod server;
pub mod settings;
pub mod tls;
