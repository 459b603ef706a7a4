//! Retention: which owned images to keep, deprecate or delete. Pure: the
//! planner sees images and a policy and returns a verdict per image, with
//! its reason; `kiln::retention` carries it out for the controller and
//! `kiln prune` alike.

pub mod plan;
pub mod selection;
pub mod status;

pub use plan::{ImageInfo, ImageOwner, ImageVerdict, PlanError, Protection, Rules, plan};
pub use selection::{in_use, rules, selects};
