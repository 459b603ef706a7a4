//! Artifact IDs per builder, turned into one image ID per region.

use crate::api::RegionArtifact;

/// Why an artifact ID could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    /// The ID does not have the builder's documented shape.
    #[error("artifact ID {id:?} from builder {builder_id} is not in the expected form {expected}")]
    Malformed {
        /// Builder that produced it.
        builder_id: String,
        /// The ID.
        id: String,
        /// What it should look like.
        expected: &'static str,
    },
}

/// The image families kiln understands, by Packer builder ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuilderKind {
    /// amazon-ebs, amazon-instance, amazon-chroot, amazon-ebssurrogate.
    Amazon,
    /// googlecompute.
    GoogleCompute,
    /// azure-arm.
    AzureArm,
    /// digitalocean.
    DigitalOcean,
    /// openstack.
    OpenStack,
}

impl BuilderKind {
    /// Recognizes a builder ID; `None` for builders that make no cloud image
    /// (null, file, docker, an EBS volume, ...).
    pub fn from_builder_id(id: &str) -> Option<Self> {
        match id {
            "mitchellh.amazonebsvolume" => None,
            id if id.starts_with("mitchellh.amazon") => Some(Self::Amazon),
            "packer.googlecompute" => Some(Self::GoogleCompute),
            "Azure.ResourceManagement.VMImage" => Some(Self::AzureArm),
            "pearkes.digitalocean" => Some(Self::DigitalOcean),
            "mitchellh.openstack" => Some(Self::OpenStack),
            _ => None,
        }
    }
}

/// Splits an artifact ID into per-region image IDs.
///
/// `regions` are the ImageBuild's regions; builders whose ID names no region
/// (googlecompute, azure-arm, openstack) produced their image in the first one
/// (Azure galleries replicate the same version to every listed region).
pub fn region_artifacts(
    kind: BuilderKind,
    builder_id: &str,
    id: &str,
    regions: &[String],
) -> Result<Vec<RegionArtifact>, ArtifactError> {
    let malformed = |expected| ArtifactError::Malformed {
        builder_id: builder_id.to_owned(),
        id: id.to_owned(),
        expected,
    };
    let one = |region: &str, image: &str| RegionArtifact {
        region: region.to_owned(),
        image_id: image.to_owned(),
    };
    let first_region = regions.first().map(String::as_str).unwrap_or_default();
    let mut out = match kind {
        // "us-east-1:ami-1,eu-west-1:ami-2"
        BuilderKind::Amazon => id
            .split(',')
            .map(|pair| match pair.trim().split_once(':') {
                Some((region, ami)) if !region.is_empty() && ami.starts_with("ami-") => {
                    Ok(one(region, ami))
                }
                _ => Err(malformed("region:ami-id[,region:ami-id...]")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        // "nyc3,ams3:123456": one snapshot, available in each listed region.
        BuilderKind::DigitalOcean => {
            let (names, snapshot) = id
                .rsplit_once(':')
                .ok_or_else(|| malformed("region[,region...]:snapshot-id"))?;
            if snapshot.is_empty() || !snapshot.chars().all(|c| c.is_ascii_digit()) {
                return Err(malformed("region[,region...]:snapshot-id"));
            }
            names
                .split(',')
                .filter(|r| !r.is_empty())
                .map(|r| one(r, snapshot))
                .collect()
        }
        BuilderKind::AzureArm => {
            if id.trim().is_empty() {
                return Err(malformed("an Azure resource ID"));
            }
            regions.iter().map(|r| one(r, id.trim())).collect()
        }
        BuilderKind::GoogleCompute | BuilderKind::OpenStack => {
            if id.trim().is_empty() || id.contains(',') {
                return Err(malformed("a single image name or ID"));
            }
            vec![one(first_region, id.trim())]
        }
    };
    if out.is_empty() {
        return Err(malformed("at least one image"));
    }
    out.sort_by(|a, b| a.region.cmp(&b.region));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| (*s).to_owned()).collect()
    }

    fn pairs(a: &[RegionArtifact]) -> Vec<(&str, &str)> {
        a.iter()
            .map(|x| (x.region.as_str(), x.image_id.as_str()))
            .collect()
    }

    #[test]
    fn amazon_pairs() {
        let id = "eu-west-1:ami-6e5ef68257e909af9,us-east-1:ami-5b2c62e32bc3a9860";
        let got = region_artifacts(
            BuilderKind::Amazon,
            "mitchellh.amazonebs",
            id,
            &regions(&["us-east-1"]),
        )
        .expect("ok");
        assert_eq!(
            pairs(&got),
            vec![
                ("eu-west-1", "ami-6e5ef68257e909af9"),
                ("us-east-1", "ami-5b2c62e32bc3a9860")
            ]
        );
    }

    #[test]
    fn amazon_rejects_non_ami() {
        let err = region_artifacts(
            BuilderKind::Amazon,
            "mitchellh.amazonebs",
            "us-east-1:snap-1",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("region:ami-id"));
    }

    #[test]
    fn digitalocean_snapshot_in_each_region() {
        let got = region_artifacts(
            BuilderKind::DigitalOcean,
            "pearkes.digitalocean",
            "nyc3,ams3:123456",
            &[],
        )
        .expect("ok");
        assert_eq!(pairs(&got), vec![("ams3", "123456"), ("nyc3", "123456")]);
        assert!(
            region_artifacts(
                BuilderKind::DigitalOcean,
                "pearkes.digitalocean",
                "nyc3:abc",
                &[]
            )
            .is_err()
        );
    }

    #[test]
    fn single_image_builders_use_the_first_region() {
        let got = region_artifacts(
            BuilderKind::GoogleCompute,
            "packer.googlecompute",
            "app-2026-11-22-1100",
            &regions(&["us-central1-a"]),
        )
        .expect("ok");
        assert_eq!(pairs(&got), vec![("us-central1-a", "app-2026-11-22-1100")]);
        let got = region_artifacts(
            BuilderKind::OpenStack,
            "mitchellh.openstack",
            "6d3c6f5e-1b2a-4c3d-9e8f-0a1b2c3d4e5f",
            &regions(&["RegionOne"]),
        )
        .expect("ok");
        assert_eq!(got[0].region, "RegionOne");
    }

    #[test]
    fn azure_gallery_version_in_every_region() {
        let id = "/subscriptions/0000/resourceGroups/images/providers/Microsoft.Compute/images/runner-2026";
        let got = region_artifacts(
            BuilderKind::AzureArm,
            "Azure.ResourceManagement.VMImage",
            id,
            &regions(&["eastus", "westeurope"]),
        )
        .expect("ok");
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|a| a.image_id == id));
    }

    #[test]
    fn builder_ids() {
        assert_eq!(
            BuilderKind::from_builder_id("mitchellh.amazonebs"),
            Some(BuilderKind::Amazon)
        );
        assert_eq!(
            BuilderKind::from_builder_id("mitchellh.amazon.ebssurrogate"),
            Some(BuilderKind::Amazon)
        );
        assert_eq!(
            BuilderKind::from_builder_id("mitchellh.amazonebsvolume"),
            None
        );
        assert_eq!(BuilderKind::from_builder_id("packer.null"), None);
    }
}
