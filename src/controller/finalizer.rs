//! The `kiln.dev/build` finalizer: held only while a build runs, so that
//! deleting an ImageBuild stops its build the way Packer can clean up after,
//! and claims images a finished build made, before the object goes. Idle
//! objects carry none, so they cost no write.

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};

use super::{Context, Error};
use crate::api::ImageBuild;

/// The finalizer's name.
pub const FINALIZER: &str = "kiln.dev/build";

/// Whether the object carries kiln's finalizer.
pub fn held(ib: &ImageBuild) -> bool {
    ib.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds the finalizer (before a build starts: intent before action);
/// returns the object as stored.
pub async fn add(ctx: &Context, ib: &ImageBuild) -> Result<ImageBuild, Error> {
    let mut finalizers = ib.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    patch(ctx, ib, finalizers).await
}

/// Removes the finalizer once no build runs; returns the object as stored.
pub async fn remove(ctx: &Context, ib: &ImageBuild) -> Result<ImageBuild, Error> {
    let finalizers = ib
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    patch(ctx, ib, finalizers).await
}

/// A merge patch of `metadata.finalizers`, conditional on the object the
/// reconcile read: another controller's finalizer is never dropped.
async fn patch(
    ctx: &Context,
    ib: &ImageBuild,
    finalizers: Vec<String>,
) -> Result<ImageBuild, Error> {
    let api: Api<ImageBuild> =
        Api::namespaced(ctx.client.clone(), &ib.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "metadata": {
            "resourceVersion": ib.resource_version(),
            "finalizers": finalizers,
        }
    });
    let params = PatchParams {
        field_manager: Some(super::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    Ok(api
        .patch(&ib.name_any(), &params, &Patch::Merge(&body))
        .await?)
}
