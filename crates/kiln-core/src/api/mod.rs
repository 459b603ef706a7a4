//! The kiln.dev/v1alpha1 API: `ImageBuild` and `ImagePolicy`.
//!
//! Everything a schema or a CEL rule can check is checked at admission, so the
//! controller only ever sees objects whose shape is valid. Messages name the
//! field and the fix, because they are what a user reads from `kubectl apply`.

mod common;
mod image_build;
mod image_policy;

pub use common::*;
pub use image_build::*;
pub use image_policy::*;

/// The API group of every kiln resource.
pub const GROUP: &str = "kiln.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
