//! Deprecating and deleting images: Azure's own deprecation fields, the
//! long-running deletion, and the protection until the end of life.

use jiff::Timestamp;
use reqwest::{Method, StatusCode};

use super::{
    Azure, SETTINGS,
    model::{DeprecatePatch, DeprecateProfile, DeprecateProperties, ImageRef},
};
use crate::provider::{Deprecation, ProviderError};
use kiln_core::retention::ImageInfo;

impl Azure {
    pub(super) async fn delete_image(
        &self,
        image: &ImageInfo,
    ) -> Result<Option<String>, ProviderError> {
        let region = image.region.as_str();
        let Some(target) = ImageRef::parse(&image.image_id).filter(|i| self.is_ours(i)) else {
            return Err(ProviderError::Invalid(format!(
                "'{}' is not an image of {SETTINGS} (subscription {}, resource group {}{}); kiln deletes nothing else",
                image.image_id,
                self.settings.subscription_id,
                self.settings.resource_group,
                self.gallery()
                    .map(|g| format!(", gallery {}/{}", g.name, g.image_definition))
                    .unwrap_or_default()
            )));
        };
        let id = target.id();
        let operation = match target {
            ImageRef::Version { .. } => "GalleryImageVersions_Delete",
            ImageRef::Managed { .. } => "Images_Delete",
        };
        if let (true, Some(eol)) = (image.delete_blocked, image.end_of_life)
            && eol > Timestamp::now()
        {
            return Err(blocked(operation, region, &id, eol));
        }
        let lock = self.lock_for(&id);
        let _turn = lock.lock().await;
        let reply = self
            .call::<()>(
                Method::DELETE,
                self.image_url(&target)?,
                None,
                operation,
                region,
            )
            .await?;
        match reply.status {
            // 204 and 404: already gone (another region's entry of the
            // same version deleted it).
            StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                self.finish(&reply, operation, region, &id, "the image is still there")
                    .await?;
                Ok(None)
            }
            _ => {
                // Azure refused: a version protected until its end of life
                // (set since it was listed) is named as such.
                if let ImageRef::Version { .. } = target
                    && let Ok(Some(v)) = self
                        .get_version(&target, false, "GalleryImageVersions_Get", region)
                        .await
                    && v.delete_blocked()
                    && let Some(eol) = v.end_of_life()
                {
                    return Err(blocked(operation, region, &id, eol));
                }
                Err(reply.unexpected(operation, region))
            }
        }
    }

    pub(super) async fn deprecate_version(
        &self,
        image: &ImageInfo,
        deprecation: &Deprecation,
    ) -> Result<Option<String>, ProviderError> {
        const OP: &str = "GalleryImageVersions_Update";
        let region = image.region.as_str();
        let Some(target) = ImageRef::parse(&image.image_id)
            .filter(|i| matches!(i, ImageRef::Version { .. }) && self.is_ours(i))
        else {
            return Ok(Some(format!(
                "kept: '{}' is not a version of the gallery image definition in {SETTINGS}.gallery, and only gallery versions can be deprecated",
                image.image_id
            )));
        };
        // Obsolete is not a stage Azure has: it stays deprecated.
        let planned = deprecation.delete_at.unwrap_or(deprecation.at);
        let id = target.id();
        let lock = self.lock_for(&id);
        let _turn = lock.lock().await;
        let Some(version) = self
            .get_version(&target, false, "GalleryImageVersions_Get", region)
            .await?
        else {
            return Ok(Some(format!("{id} is gone")));
        };
        // A version protected until a later end of life keeps it: an
        // earlier date would lift the protection someone set. It is
        // deprecated all the same (the plan says when it can go).
        let end = match version.end_of_life() {
            Some(eol) if version.delete_blocked() && eol > planned => {
                tracing::info!(image_id = %id, end_of_life = %eol, "deprecated; its end of life stays: deletion is blocked until then");
                eol
            }
            _ => planned,
        };
        let profile = &version.properties.publishing_profile;
        if profile.exclude_from_latest == Some(true) && version.end_of_life() == Some(end) {
            return Ok(None);
        }
        let patch = DeprecatePatch {
            properties: DeprecateProperties {
                publishing_profile: DeprecateProfile {
                    exclude_from_latest: true,
                    end_of_life_date: end.to_string(),
                },
                storage_profile: serde_json::Map::new(),
            },
        };
        let reply = self
            .call(
                Method::PATCH,
                self.image_url(&target)?,
                Some(&patch),
                OP,
                region,
            )
            .await?;
        match reply.status {
            s if s.is_success() => {
                self.finish(&reply, OP, region, &id, "it is not deprecated yet")
                    .await?;
                Ok(None)
            }
            StatusCode::NOT_FOUND => Ok(Some(format!("{id} is gone"))),
            _ => Err(reply.unexpected(OP, region)),
        }
    }
}

/// A version Azure keeps until its end of life.
fn blocked(operation: &'static str, region: &str, id: &str, eol: Timestamp) -> ProviderError {
    ProviderError::Api {
        operation,
        region: region.to_owned(),
        message: format!(
            "{id} cannot be deleted before its end of life {eol} (safetyProfile.blockDeletionBeforeEndOfLife); kiln deletes it after that"
        ),
    }
}
