//! Which ImageBuilds a policy governs, and which of their images are in use.

use std::collections::BTreeMap;

use kube::ResourceExt as _;

use super::Rules;
use crate::api::{ImageBuild, ImagePolicySpec};

/// The policy as planner rules.
pub fn rules(spec: &ImagePolicySpec) -> Rules {
    let protect = spec.protect.clone().unwrap_or_default();
    Rules {
        keep_last: usize::try_from(spec.keep_last).unwrap_or(0),
        max_age: spec.max_age.map(Into::into),
        min_age: spec.min_age.map(Into::into),
        protected_tags: protect.tags,
        pinned_builds: protect.build_ids.into_iter().collect(),
        pinned_images: protect.image_ids.into_iter().collect(),
        deprecate_after: spec.deprecate_after.map(Into::into),
        obsolete_after: spec.obsolete_after.map(Into::into),
        delete_after: spec.delete_after.map(Into::into),
    }
}

/// Whether a policy selects an ImageBuild (by name or label).
pub fn selects(spec: &ImagePolicySpec, ib: &ImageBuild) -> bool {
    if spec.builds.names.contains(&ib.name_any()) {
        return true;
    }
    spec.builds
        .selector
        .clone()
        .and_then(|s| kube::core::Selector::try_from(s).ok())
        .is_some_and(|s| kube::core::SelectorExt::matches(&s, ib.labels()))
}

/// Images of other ImageBuilds' latest and current builds that came from
/// these parents: parent image ID -> child name.
pub fn in_use<B: std::borrow::Borrow<ImageBuild>>(all: &[B]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for child in all.iter().map(B::borrow) {
        let Some(status) = &child.status else {
            continue;
        };
        let used = status
            .latest_image
            .iter()
            .filter_map(|l| l.parent_image.clone());
        let building = status
            .current_build
            .iter()
            .filter_map(|c| c.parent_image.clone());
        for image in used.chain(building) {
            out.insert(image, child.name_any());
        }
    }
    out
}
