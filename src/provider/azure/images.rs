//! Claiming and listing images: gallery versions and managed images, as
//! ARM holds them, into kiln's ownership and `ImageInfo`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use reqwest::{Method, StatusCode};

use super::{
    Azure, COMPUTE_API_VERSION, GALLERY_API_VERSION, GLOBAL,
    model::{self, ImageRef, ManagedImage, TagsPatch, Version, location_key},
    tags,
};
use crate::{
    api::AzureGallery,
    provider::{Owner, ProviderError},
};
use kiln_core::retention::ImageInfo;

impl Azure {
    pub(super) async fn get_version(
        &self,
        image: &ImageRef,
        expand: bool,
        operation: &'static str,
        region: &str,
    ) -> Result<Option<Version>, ProviderError> {
        let mut url = self.image_url(image)?;
        if expand {
            url.query_pairs_mut()
                .append_pair("$expand", "ReplicationStatus");
        }
        self.get_json(url, operation, region).await
    }

    /// PATCHes tags (the whole set) and follows the operation.
    pub(super) async fn put_tags(
        &self,
        image: &ImageRef,
        tags: &BTreeMap<String, String>,
        region: &str,
    ) -> Result<(), ProviderError> {
        let operation = match image {
            ImageRef::Version { .. } => "GalleryImageVersions_Update",
            ImageRef::Managed { .. } => "Images_Update",
        };
        let id = image.id();
        let reply = self
            .call(
                Method::PATCH,
                self.image_url(image)?,
                Some(&TagsPatch { tags }),
                operation,
                region,
            )
            .await?;
        match reply.status {
            s if s.is_success() => {
                self.finish(&reply, operation, region, &id, "its tags may be unchanged")
                    .await
            }
            StatusCode::NOT_FOUND => Err(ProviderError::ImageMissing {
                region: region.to_owned(),
                image_id: id,
            }),
            StatusCode::BAD_REQUEST => Err(ProviderError::Invalid(format!(
                "Azure refused kiln's tags on {id} ({}); an image holds at most 50 tags, with names of at most 512 characters and values of at most 256",
                reply.message()
            ))),
            _ => Err(reply.unexpected(operation, region)),
        }
    }

    /// Tags one version; returns the regions (of `regions`) it is in.
    pub(super) async fn claim_version(
        &self,
        image: &ImageRef,
        regions: &[&str],
        owner: &Owner,
    ) -> Result<(Vec<String>, Option<String>), ProviderError> {
        const OP: &str = "GalleryImageVersions_Get";
        let first = regions.first().copied().unwrap_or(GLOBAL);
        let id = image.id();
        let Some(version) = self.get_version(image, true, OP, first).await? else {
            return Err(ProviderError::ImageMissing {
                region: first.to_owned(),
                image_id: id,
            });
        };
        check_state(version.state(), first, &id)?;
        let present = version.regions();
        if let Some(status) = &version.properties.replication_status {
            for r in &status.summary {
                let Some(region) = r.region.as_deref() else {
                    continue;
                };
                if !regions
                    .iter()
                    .any(|w| location_key(w) == location_key(region))
                {
                    continue;
                }
                match r.state.as_deref().unwrap_or_default() {
                    "Replicating" => {
                        return Err(ProviderError::ImageNotReady {
                            region: location_key(region),
                            image_id: id,
                            state: format!("replicating to {region}"),
                        });
                    }
                    "Failed" => {
                        return Err(ProviderError::ImageFailed {
                            region: location_key(region),
                            image_id: id,
                            state: format!(
                                "failed to replicate to {region}: {}",
                                r.details.as_deref().unwrap_or("no details")
                            ),
                        });
                    }
                    _ => {}
                }
            }
        }
        let (found, missing): (Vec<&str>, Vec<&str>) = regions
            .iter()
            .partition(|r| present.contains(&location_key(r)));
        if found.is_empty() {
            return Err(ProviderError::ImageFailed {
                region: first.to_owned(),
                image_id: id,
                state: format!(
                    "not replicated to any of spec.provider.regions (its target regions: {})",
                    present.join(", ")
                ),
            });
        }
        if let Some(other) = tags::decode_owner(&version.tags())
            && (other.namespace != owner.namespace || other.image_build != owner.image_build)
        {
            return Err(ProviderError::Invalid(format!(
                "{id} already belongs to ImageBuild {}/{}; kiln does not take an image from another ImageBuild",
                other.namespace, other.image_build
            )));
        }
        if let Some(tags) = tags::merged(&version.tags(), &tags::owner_tags(owner)) {
            self.put_tags(image, &tags, first).await?;
        }
        let note = (!missing.is_empty()).then(|| {
            format!(
                "{id} is not replicated to {}: add them to the template's replication_regions",
                missing.join(", ")
            )
        });
        Ok((found.iter().map(|r| (*r).to_owned()).collect(), note))
    }

    /// Tags one managed image; returns the location it is in.
    pub(super) async fn claim_managed(
        &self,
        image: &ImageRef,
        regions: &[&str],
        owner: &Owner,
    ) -> Result<(String, Option<String>), ProviderError> {
        const OP: &str = "Images_Get";
        let first = regions.first().copied().unwrap_or(GLOBAL);
        let id = image.id();
        let Some(found) = self
            .get_json::<ManagedImage>(self.image_url(image)?, OP, first)
            .await?
        else {
            return Err(ProviderError::ImageMissing {
                region: first.to_owned(),
                image_id: id,
            });
        };
        check_state(found.state(), first, &id)?;
        let location = location_key(&found.location);
        let Some(region) = regions.iter().find(|r| location_key(r) == location) else {
            return Err(ProviderError::Invalid(format!(
                "managed image {id} is in {location}, not in spec.provider.regions ({}); build it in the first region (location = var.kiln_region)",
                regions.join(", ")
            )));
        };
        if let Some(other) = tags::decode_owner(&found.tags())
            && (other.namespace != owner.namespace || other.image_build != owner.image_build)
        {
            return Err(ProviderError::Invalid(format!(
                "{id} already belongs to ImageBuild {}/{}; kiln does not take an image from another ImageBuild",
                other.namespace, other.image_build
            )));
        }
        let mut ours = tags::owner_tags(owner);
        // ComputeRP may not say when an image was made: the claim's time
        // stands in for it (kept from the first claim).
        let claimed = tags::get(&found.tags(), tags::CLAIMED)
            .map(str::to_owned)
            .unwrap_or_else(|| Timestamp::now().to_string());
        ours.insert(tags::CLAIMED.to_owned(), claimed);
        if let Some(tags) = tags::merged(&found.tags(), &ours) {
            self.put_tags(image, &tags, region).await?;
        }
        let others: Vec<&str> = regions
            .iter()
            .copied()
            .filter(|r| location_key(r) != location)
            .collect();
        let note = (!others.is_empty()).then(|| {
            format!(
                "a managed image lives in one location: {id} is recorded in {region} only; set spec.provider.azure.gallery to replicate to {}",
                others.join(", ")
            )
        });
        Ok(((*region).to_owned(), note))
    }

    /// The version of this build in the image definition, found by its
    /// `kiln-build` tag (Packer's artifact named none kiln can use); the
    /// newest if there are several.
    pub(super) async fn find_by_build(
        &self,
        build_id: &str,
    ) -> Result<Option<ImageRef>, ProviderError> {
        let Some(g) = self.gallery() else {
            return Ok(None);
        };
        if build_id.is_empty() {
            return Ok(None);
        }
        let versions = self.versions(g).await?.unwrap_or_default();
        let newest = versions
            .into_iter()
            .filter(|v| tags::get(&v.tags(), tags::BUILD) == Some(build_id))
            .max_by_key(|v| {
                model::timestamp(v.properties.publishing_profile.published_date.as_deref())
            });
        Ok(newest.and_then(|v| {
            let name = v.name?;
            Some(ImageRef::Version {
                subscription: self.settings.subscription_id.clone(),
                resource_group: self.settings.resource_group.clone(),
                gallery: g.name.clone(),
                definition: g.image_definition.clone(),
                version: name,
            })
        }))
    }

    /// Every version of the image definition; `None` when it is not there.
    pub(super) async fn versions(
        &self,
        g: &AzureGallery,
    ) -> Result<Option<Vec<Version>>, ProviderError> {
        let mut segments = self.definition_segments(g);
        segments.push("versions");
        let url = self.url(&segments, GALLERY_API_VERSION)?;
        self.list(url, "GalleryImageVersions_ListByGalleryImage")
            .await
    }

    /// Every managed image of the resource group; `None` when it is not there.
    pub(super) async fn managed_images(&self) -> Result<Option<Vec<ManagedImage>>, ProviderError> {
        let mut segments = self.scope_segments().to_vec();
        segments.extend(["providers", "Microsoft.Compute", "images"]);
        let url = self.url(&segments, COMPUTE_API_VERSION)?;
        self.list(url, "Images_ListByResourceGroup").await
    }
}

/// `provisioningState` as claim judges it.
pub(super) fn check_state(state: &str, region: &str, id: &str) -> Result<(), ProviderError> {
    match state {
        "Succeeded" => Ok(()),
        "Failed" | "Deleting" | "Canceled" => Err(ProviderError::ImageFailed {
            region: region.to_owned(),
            image_id: id.to_owned(),
            state: state.to_owned(),
        }),
        // Creating, Updating, Migrating, and whatever Azure adds.
        _ => Err(ProviderError::ImageNotReady {
            region: region.to_owned(),
            image_id: id.to_owned(),
            state: state.to_owned(),
        }),
    }
}

pub(super) fn version_infos(
    v: Version,
    image_build: (&str, &str),
    regions: &[String],
) -> Vec<ImageInfo> {
    let tags = v.tags();
    let Some(owner) = tags::decode_owner(&tags)
        .filter(|o| o.namespace == image_build.0 && o.image_build == image_build.1)
    else {
        return Vec::new();
    };
    let id = v.id.clone().unwrap_or_default();
    // Still being made: not Packer's to lose to a prune.
    if id.is_empty() || matches!(v.state(), "Creating" | "Updating") {
        return Vec::new();
    }
    let profile = &v.properties.publishing_profile;
    let Some(created_at) = model::timestamp(profile.published_date.as_deref()) else {
        tracing::warn!(image_id = %id, "Azure gallery version left out of retention: it has no publishedDate");
        return Vec::new();
    };
    let present = v.regions();
    let info = ImageInfo {
        region: String::new(),
        image_id: ImageRef::parse(&id).map(|i| i.id()).unwrap_or(id),
        name: v.name.clone(),
        created_at,
        owner: Some(owner),
        keep: tags::has(&tags, tags::KEEP),
        deprecated: profile.exclude_from_latest == Some(true),
        obsolete: false,
        end_of_life: v.end_of_life(),
        delete_blocked: v.delete_blocked(),
        tags,
        dependents: Vec::new(),
    };
    regions
        .iter()
        .filter(|r| present.contains(&location_key(r)))
        .map(|r| ImageInfo {
            region: r.clone(),
            ..info.clone()
        })
        .collect()
}

pub(super) fn managed_info(
    m: ManagedImage,
    image_build: (&str, &str),
    regions: &[String],
) -> Option<ImageInfo> {
    let tags = m.tags();
    let owner = tags::decode_owner(&tags)
        .filter(|o| o.namespace == image_build.0 && o.image_build == image_build.1)?;
    let id = m.id.clone().filter(|i| !i.is_empty())?;
    let region = regions
        .iter()
        .find(|r| location_key(r) == location_key(&m.location))?;
    if matches!(m.state(), "Creating" | "Updating") {
        return None;
    }
    let created = m
        .system_data
        .as_ref()
        .and_then(|s| model::timestamp(s.created_at.as_deref()))
        .or_else(|| model::timestamp(tags::get(&tags, tags::CLAIMED)));
    let Some(created_at) = created else {
        tracing::warn!(image_id = %id, "Azure managed image left out of retention: no creation time (systemData.createdAt or the kiln-claimed tag)");
        return None;
    };
    Some(ImageInfo {
        region: region.clone(),
        image_id: ImageRef::parse(&id).map(|i| i.id()).unwrap_or(id),
        name: m.name.clone(),
        created_at,
        owner: Some(owner),
        keep: tags::has(&tags, tags::KEEP),
        deprecated: false,
        obsolete: false,
        end_of_life: None,
        delete_blocked: false,
        tags,
        dependents: Vec::new(),
    })
}
