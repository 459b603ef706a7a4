//! Retention: which owned images to keep, deprecate or delete. Pure: the
//! planner sees images and a policy and returns a decision per image, with
//! its reason; the controller and `kiln prune` carry it out.

pub mod plan;

pub use plan::{Decision, ImageInfo, PlanError, Protection, Rules, plan};
