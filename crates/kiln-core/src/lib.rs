//! kiln's core: the kiln.dev API types and the domain logic that decides,
//! free of I/O. No Kubernetes client, no HTTP and no cloud SDK may be used
//! here; the crate boundary keeps it so (docs/architecture.md).

pub mod api;
pub mod conditions;
pub mod image_build;
pub mod reasons;
pub mod retention;
