//! The ImageBuild domain, free of Kubernetes and cloud I/O: build identity,
//! the decision what to do next, and the status that follows from it.

pub mod conditions;
pub mod decide;
pub mod identity;
pub mod schedule;
pub mod status;
