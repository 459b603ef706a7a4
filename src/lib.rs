//! kiln: a Kubernetes operator that bakes VM images with Packer and retires
//! them by policy.

pub mod api;
pub mod crdgen;
pub mod testenv;
