//! What kiln reads from and writes to Azure Resource Manager: ARM resource
//! IDs, and typed bodies holding exactly the fields kiln uses (names as in
//! the GalleryRP 2024-03-03 and ComputeRP Swagger).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// An image kiln manages, by its full ARM resource ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `…/providers/Microsoft.Compute/galleries/{g}/images/{def}/versions/{ver}`.
    Version {
        /// Subscription ID.
        subscription: String,
        /// Resource group.
        resource_group: String,
        /// Gallery name.
        gallery: String,
        /// Image definition.
        definition: String,
        /// Version name (`1.0.3`).
        version: String,
    },
    /// `…/providers/Microsoft.Compute/images/{name}`.
    Managed {
        /// Subscription ID.
        subscription: String,
        /// Resource group.
        resource_group: String,
        /// Image name.
        name: String,
    },
}

impl ImageRef {
    /// Parses an ARM resource ID. ARM compares the fixed segments and names
    /// without regard to case (Packer reports `resourceGroups`, some APIs
    /// `resourcegroups`), so this does too; the names keep their case.
    pub fn parse(id: &str) -> Option<ImageRef> {
        let parts: Vec<&str> = id.trim().trim_end_matches('/').split('/').collect();
        let is = |i: usize, word: &str| parts.get(i).is_some_and(|p| p.eq_ignore_ascii_case(word));
        let name = |i: usize| {
            parts
                .get(i)
                .filter(|p| !p.is_empty())
                .map(|p| (*p).to_owned())
        };
        if !(parts.first() == Some(&"")
            && is(1, "subscriptions")
            && is(3, "resourceGroups")
            && is(5, "providers")
            && is(6, "Microsoft.Compute"))
        {
            return None;
        }
        let subscription = name(2)?;
        let resource_group = name(4)?;
        if parts.len() == 9 && is(7, "images") {
            return Some(ImageRef::Managed {
                subscription,
                resource_group,
                name: name(8)?,
            });
        }
        if parts.len() == 13 && is(7, "galleries") && is(9, "images") && is(11, "versions") {
            return Some(ImageRef::Version {
                subscription,
                resource_group,
                gallery: name(8)?,
                definition: name(10)?,
                version: name(12)?,
            });
        }
        None
    }

    /// The subscription and resource group it is in.
    pub fn scope(&self) -> (&str, &str) {
        match self {
            ImageRef::Version {
                subscription,
                resource_group,
                ..
            }
            | ImageRef::Managed {
                subscription,
                resource_group,
                ..
            } => (subscription, resource_group),
        }
    }

    /// The path segments of its ARM URL.
    pub fn segments(&self) -> Vec<&str> {
        match self {
            ImageRef::Version {
                subscription,
                resource_group,
                gallery,
                definition,
                version,
            } => vec![
                "subscriptions",
                subscription,
                "resourceGroups",
                resource_group,
                "providers",
                "Microsoft.Compute",
                "galleries",
                gallery,
                "images",
                definition,
                "versions",
                version,
            ],
            ImageRef::Managed {
                subscription,
                resource_group,
                name,
            } => vec![
                "subscriptions",
                subscription,
                "resourceGroups",
                resource_group,
                "providers",
                "Microsoft.Compute",
                "images",
                name,
            ],
        }
    }

    /// The resource ID in ARM's canonical spelling.
    pub fn id(&self) -> String {
        format!("/{}", self.segments().join("/"))
    }
}

/// A location as kiln compares it: ARM answers display names in some places
/// (`West Europe` in `targetRegions`, provider locations) and names
/// (`westeurope`) in others.
pub fn location_key(location: &str) -> String {
    location
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// An ARM timestamp (`date-time`), if it is one.
pub fn timestamp(value: Option<&str>) -> Option<Timestamp> {
    value.and_then(|v| v.trim().parse::<Timestamp>().ok())
}

/// A page of a listing.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub value: Vec<T>,
    pub next_link: Option<String>,
}

/// `GalleryImageVersion` (the fields kiln reads).
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Version {
    pub id: Option<String>,
    pub name: Option<String>,
    // ARM answers `null` for a resource without tags.
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub properties: VersionProperties,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct VersionProperties {
    pub provisioning_state: Option<String>,
    #[serde(default)]
    pub publishing_profile: PublishingProfile,
    #[serde(default)]
    pub safety_profile: SafetyProfile,
    pub replication_status: Option<ReplicationStatus>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct PublishingProfile {
    #[serde(default)]
    pub target_regions: Vec<TargetRegion>,
    pub exclude_from_latest: Option<bool>,
    pub published_date: Option<String>,
    pub end_of_life_date: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct TargetRegion {
    pub name: String,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct SafetyProfile {
    pub block_deletion_before_end_of_life: Option<bool>,
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct ReplicationStatus {
    #[serde(default)]
    pub summary: Vec<RegionalReplication>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct RegionalReplication {
    pub region: Option<String>,
    pub state: Option<String>,
    pub details: Option<String>,
}

impl Version {
    /// Its tags (none when ARM answered `null`).
    pub fn tags(&self) -> BTreeMap<String, String> {
        self.tags.clone().unwrap_or_default()
    }

    /// `provisioningState`; a version without one is taken as done.
    pub fn state(&self) -> &str {
        self.properties
            .provisioning_state
            .as_deref()
            .unwrap_or("Succeeded")
    }

    /// The locations it is replicated to, as [`location_key`]s.
    pub fn regions(&self) -> Vec<String> {
        self.properties
            .publishing_profile
            .target_regions
            .iter()
            .map(|r| location_key(&r.name))
            .collect()
    }

    /// `endOfLifeDate`.
    pub fn end_of_life(&self) -> Option<Timestamp> {
        timestamp(
            self.properties
                .publishing_profile
                .end_of_life_date
                .as_deref(),
        )
    }

    /// Azure refuses to delete it before its end of life.
    pub fn delete_blocked(&self) -> bool {
        self.properties
            .safety_profile
            .block_deletion_before_end_of_life
            .unwrap_or(false)
            && self.end_of_life().is_some()
    }
}

/// A ComputeRP `Image` (a managed image; the fields kiln reads).
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ManagedImage {
    pub id: Option<String>,
    pub name: Option<String>,
    pub location: String,
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub properties: ManagedImageProperties,
    pub system_data: Option<SystemData>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct ManagedImageProperties {
    pub provisioning_state: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct SystemData {
    pub created_at: Option<String>,
}

impl ManagedImage {
    /// Its tags (none when ARM answered `null`).
    pub fn tags(&self) -> BTreeMap<String, String> {
        self.tags.clone().unwrap_or_default()
    }

    /// `provisioningState`; an image without one is taken as done.
    pub fn state(&self) -> &str {
        self.properties
            .provisioning_state
            .as_deref()
            .unwrap_or("Succeeded")
    }
}

/// `Provider` of the Resources API: where each resource type is available.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceProvider {
    #[serde(default)]
    pub resource_types: Vec<ProviderResourceType>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderResourceType {
    pub resource_type: Option<String>,
    #[serde(default)]
    pub locations: Vec<String>,
}

/// ARM's error body (`CloudError`, `ErrorResponse`).
#[derive(Deserialize, Default)]
pub struct CloudError {
    pub error: Option<ErrorDetail>,
}

#[derive(Deserialize, Default, Debug, Clone)]
pub struct ErrorDetail {
    pub code: Option<String>,
    pub message: Option<String>,
}

/// What an `Azure-AsyncOperation` URL answers.
#[derive(Deserialize)]
pub struct AsyncOperation {
    pub status: String,
    pub error: Option<ErrorDetail>,
}

/// `PATCH` body that sets the tags (`UpdateResourceDefinition.tags`).
#[derive(Serialize)]
pub struct TagsPatch<'a> {
    pub tags: &'a BTreeMap<String, String>,
}

/// `PATCH` body that deprecates a version (`GalleryImageVersionUpdate`).
#[derive(Serialize)]
pub struct DeprecatePatch {
    pub properties: DeprecateProperties,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeprecateProperties {
    pub publishing_profile: DeprecateProfile,
    // The spec requires it in `GalleryImageVersionProperties`, which the
    // PATCH body reuses; empty, it changes nothing.
    pub storage_profile: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeprecateProfile {
    pub exclude_from_latest: bool,
    pub end_of_life_date: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_ids_parse_whatever_the_case_of_the_fixed_parts() {
        let v = "/subscriptions/0000-1/resourcegroups/Images/providers/microsoft.compute/galleries/g1/images/base/versions/1.0.3";
        let parsed = ImageRef::parse(v).expect("a version");
        assert_eq!(
            parsed,
            ImageRef::Version {
                subscription: "0000-1".into(),
                resource_group: "Images".into(),
                gallery: "g1".into(),
                definition: "base".into(),
                version: "1.0.3".into(),
            }
        );
        assert_eq!(
            parsed.id(),
            "/subscriptions/0000-1/resourceGroups/Images/providers/Microsoft.Compute/galleries/g1/images/base/versions/1.0.3"
        );
        let m =
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/runner-2026/";
        assert!(
            matches!(ImageRef::parse(m), Some(ImageRef::Managed { name, .. }) if name == "runner-2026")
        );
        for bad in [
            "UNKNOWN ID",
            "https://acct.blob.core.windows.net/system/Microsoft.Compute/Images/x.vhd",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/base",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/d",
            "/subscriptions//resourceGroups/rg/providers/Microsoft.Compute/images/x",
        ] {
            assert_eq!(ImageRef::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn locations_compare_by_name_or_display_name() {
        assert_eq!(location_key("West Europe"), "westeurope");
        assert_eq!(location_key("eastus2"), "eastus2");
        assert_eq!(location_key("East US 2"), "eastus2");
    }
}
