//! kiln: a Kubernetes operator that bakes VM images with Packer and retires
//! them by policy.

pub mod api;
pub mod build;
pub mod child;
pub mod controller;
pub mod crdgen;
pub mod executor;
pub mod metrics;
pub mod packer;
pub mod provider;
pub mod server;
pub mod testenv;

/// Makes ring the process's TLS crypto provider. kube and reqwest use ring,
/// the AWS SDK brings aws-lc-rs, and rustls refuses to guess between two.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
pub mod retention;
pub mod validate;
