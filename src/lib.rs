//! kiln: a Kubernetes operator that bakes VM images with Packer and retires
//! them by policy.
//!
//! The pure core (API types, build decisions, status, conditions, retention
//! planning) is the `kiln-core` crate, re-exported here; this crate adds the
//! I/O around it. docs/architecture.md maps the modules and which may import
//! which.

pub use kiln_core::{api, conditions, image_build, reasons};

pub mod child;
pub mod cli;
pub mod controller;
pub mod crdgen;
pub mod dereference;
pub mod executor;
pub mod metrics;
pub mod packer;
pub mod provider;
pub mod retention;
pub mod server;
pub mod validate;

/// Makes ring the process's TLS crypto provider. kube and reqwest use ring,
/// the AWS SDK brings aws-lc-rs, and rustls refuses to guess between two.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
