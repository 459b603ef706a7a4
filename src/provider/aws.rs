//! AWS: AMIs and their EBS snapshots, through aws-sdk-ec2.

use aws_sdk_ec2::{
    Client,
    config::{BehaviorVersion, Credentials, Region},
    error::ProvideErrorMetadata,
    types::{Filter, Tag},
};
use futures::future::BoxFuture;

use super::{ImageProvider, Owner, ProviderError};
use crate::api::RegionArtifact;

/// Credentials read from the ImageBuild's Secret.
#[derive(Clone)]
pub struct StaticCredentials {
    /// AWS_ACCESS_KEY_ID.
    pub access_key_id: String,
    /// AWS_SECRET_ACCESS_KEY.
    pub secret_access_key: String,
    /// AWS_SESSION_TOKEN.
    pub session_token: Option<String>,
}

/// Keys an AWS credentials Secret must have.
pub const REQUIRED_KEYS: [&str; 2] = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"];

/// EC2 in any region, at the real endpoint or an override.
pub struct Aws {
    endpoint: Option<String>,
    credentials: Option<StaticCredentials>,
}

impl Aws {
    /// Without credentials the SDK's default chain applies (IRSA, instance
    /// profile, environment).
    pub fn new(endpoint: Option<String>, credentials: Option<StaticCredentials>) -> Self {
        Aws {
            endpoint,
            credentials,
        }
    }

    /// An EC2 client for one region.
    pub async fn client(&self, region: &str) -> Client {
        let mut builder = match &self.credentials {
            Some(c) => aws_sdk_ec2::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .credentials_provider(Credentials::new(
                    c.access_key_id.clone(),
                    c.secret_access_key.clone(),
                    c.session_token.clone(),
                    None,
                    "kiln-secret",
                )),
            None => {
                let shared = aws_config::defaults(BehaviorVersion::latest()).load().await;
                aws_sdk_ec2::config::Builder::from(&shared)
            }
        };
        builder = builder.region(Region::new(region.to_owned()));
        if let Some(endpoint) = &self.endpoint {
            builder = builder.endpoint_url(endpoint.clone());
        }
        Client::from_conf(builder.build())
    }
}

/// The SDK's error, as code and message, without the request (which may
/// carry signed headers).
pub fn describe_error<E: ProvideErrorMetadata + std::fmt::Display>(
    e: &aws_sdk_ec2::error::SdkError<E>,
) -> String {
    match e.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("Error"),
            service.message().unwrap_or_default()
        ),
        None => match e {
            aws_sdk_ec2::error::SdkError::DispatchFailure(f) => {
                format!("cannot reach the EC2 endpoint: {f:?}")
            }
            aws_sdk_ec2::error::SdkError::TimeoutError(_) => {
                "the EC2 endpoint timed out".to_owned()
            }
            other => other.to_string(),
        },
    }
}

fn is_auth_error(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "AuthFailure"
                | "UnauthorizedOperation"
                | "InvalidClientTokenId"
                | "SignatureDoesNotMatch"
        )
    )
}

impl ImageProvider for Aws {
    fn check_regions<'a>(
        &'a self,
        regions: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let Some(first) = regions.first() else {
                return Ok(());
            };
            let client = self.client(first).await;
            let out = client.describe_regions().all_regions(true).send().await.map_err(|e| {
                let code = e.as_service_error().and_then(|s| s.code()).map(str::to_owned);
                if is_auth_error(code.as_deref()) {
                    ProviderError::Invalid(format!(
                        "the credentials in spec.provider.credentials.secretRef were refused by EC2 ({}); fix the Secret",
                        describe_error(&e)
                    ))
                } else {
                    ProviderError::Api { operation: "DescribeRegions", region: first.clone(), message: describe_error(&e) }
                }
            })?;
            let known: Vec<String> = out
                .regions()
                .iter()
                .filter_map(|r| r.region_name().map(str::to_owned))
                .collect();
            let unknown: Vec<&String> = regions.iter().filter(|r| !known.contains(r)).collect();
            if unknown.is_empty() {
                return Ok(());
            }
            Err(ProviderError::Invalid(format!(
                "spec.provider.regions: {} not an EC2 region at this endpoint; use one of: {}",
                unknown
                    .iter()
                    .map(|r| format!("'{r}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
                    + if unknown.len() == 1 { " is" } else { " are" },
                known.join(", ")
            )))
        })
    }

    fn claim<'a>(
        &'a self,
        artifacts: &'a [RegionArtifact],
        owner: &'a Owner,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>> {
        Box::pin(async move {
            let tags: Vec<Tag> = owner
                .tags()
                .into_iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect();
            for a in artifacts {
                let client = self.client(&a.region).await;
                let api = |operation| {
                    let region = a.region.clone();
                    move |e: String| ProviderError::Api {
                        operation,
                        region,
                        message: e,
                    }
                };
                let described = client
                    .describe_images()
                    .image_ids(&a.image_id)
                    .send()
                    .await
                    .map_err(|e| describe_error(&e))
                    .map_err(api("DescribeImages"))?;
                let Some(image) = described
                    .images()
                    .iter()
                    .find(|i| i.image_id() == Some(a.image_id.as_str()))
                else {
                    return Err(ProviderError::ImageMissing {
                        region: a.region.clone(),
                        image_id: a.image_id.clone(),
                    });
                };
                let state = image
                    .state()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default();
                if state != "available" {
                    return Err(ProviderError::Api {
                        operation: "DescribeImages",
                        region: a.region.clone(),
                        message: format!("image {} is {state}, not available", a.image_id),
                    });
                }
                let mut resources = vec![a.image_id.clone()];
                resources.extend(
                    image
                        .block_device_mappings()
                        .iter()
                        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned)),
                );
                client
                    .create_tags()
                    .set_resources(Some(resources))
                    .set_tags(Some(tags.clone()))
                    .send()
                    .await
                    .map_err(|e| describe_error(&e))
                    .map_err(api("CreateTags"))?;
            }
            Ok(None)
        })
    }
}

/// A filter on one tag, for listing owned images.
pub fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}
