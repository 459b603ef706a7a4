//! The ImageBuild domain: build identity, what a run reports, the decision
//! what to do next, and the status that follows from it.

pub mod decide;
pub mod identity;
pub mod run;
pub mod schedule;
pub mod status;
