//! Removing what a Packer run announced and left behind (see
//! [`Created`]): the sweep by build that runs after a run ended without
//! recorded images. Every call tolerates "already gone", so a sweep
//! interrupted by a crash is simply done again.

use aws_sdk_ec2::{Client, types::Filter};
use jiff::Timestamp;

use super::{Aws, describe_error, error_code, image_info, with_backoff};
use crate::provider::ProviderError;
use kiln_core::image_build::run::Created;

fn filter(name: &str, values: &[String]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.to_vec()))
        .build()
}

impl Aws {
    /// Sweeps one region; returns what it removed, as `region/what id`.
    pub(super) async fn reclaim_in(
        &self,
        region: &str,
        created: &Created,
    ) -> Result<Vec<String>, ProviderError> {
        let client = self.client(region).await;
        let api = |operation: &'static str, message: String| ProviderError::Api {
            operation,
            region: region.to_owned(),
            message,
        };
        let mut removed = Vec::new();

        // The instance first: its security group cannot go while it runs.
        if !created.instances.is_empty() {
            let out = with_backoff(self, region, "DescribeInstances", &[], || {
                client
                    .describe_instances()
                    .filters(filter("instance-id", &created.instances))
                    .send()
            })
            .await
            .map_err(|e| api("DescribeInstances", describe_error(&e)))?;
            let live: Vec<String> = out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| {
                    !matches!(
                        i.state().and_then(|s| s.name()),
                        Some(
                            aws_sdk_ec2::types::InstanceStateName::Terminated
                                | aws_sdk_ec2::types::InstanceStateName::ShuttingDown
                        )
                    )
                })
                .filter_map(|i| i.instance_id().map(str::to_owned))
                .collect();
            if !live.is_empty() {
                with_backoff(self, region, "TerminateInstances", &[], || {
                    client
                        .terminate_instances()
                        .set_instance_ids(Some(live.clone()))
                        .send()
                })
                .await
                .map_err(|e| api("TerminateInstances", describe_error(&e)))?;
                removed.extend(live.iter().map(|i| format!("{region}/instance {i}")));
            }
        }

        if !created.key_pairs.is_empty() {
            let out = with_backoff(self, region, "DescribeKeyPairs", &[], || {
                client
                    .describe_key_pairs()
                    .filters(filter("key-name", &created.key_pairs))
                    .send()
            })
            .await
            .map_err(|e| api("DescribeKeyPairs", describe_error(&e)))?;
            for name in out.key_pairs().iter().filter_map(|k| k.key_name()) {
                with_backoff(self, region, "DeleteKeyPair", &[], || {
                    client.delete_key_pair().key_name(name).send()
                })
                .await
                .map_err(|e| api("DeleteKeyPair", describe_error(&e)))?;
                removed.push(format!("{region}/key pair {name}"));
            }
        }

        if !created.security_groups.is_empty() {
            let out = with_backoff(self, region, "DescribeSecurityGroups", &[], || {
                client
                    .describe_security_groups()
                    .filters(filter("group-name", &created.security_groups))
                    .send()
            })
            .await
            .map_err(|e| api("DescribeSecurityGroups", describe_error(&e)))?;
            for group in out.security_groups() {
                let Some(id) = group.group_id() else { continue };
                // A terminating instance holds its group for a while.
                match with_backoff(
                    self,
                    region,
                    "DeleteSecurityGroup",
                    &["DependencyViolation"],
                    || client.delete_security_group().group_id(id).send(),
                )
                .await
                {
                    Ok(_) => removed.push(format!(
                        "{region}/security group {}",
                        group.group_name().unwrap_or(id)
                    )),
                    Err(e) if error_code(&e) == Some("InvalidGroup.NotFound") => {}
                    Err(e) => return Err(api("DeleteSecurityGroup", describe_error(&e))),
                }
            }
        }

        removed.extend(self.reclaim_images(&client, region, created).await?);
        Ok(removed)
    }

    /// Images of the announced names, made since the run began, that no
    /// build claimed: an AMI Packer began (or copied to another region) and
    /// did not deregister when it was cancelled or failed.
    async fn reclaim_images(
        &self,
        client: &Client,
        region: &str,
        created: &Created,
    ) -> Result<Vec<String>, ProviderError> {
        let Some(since) = created.since else {
            return Ok(Vec::new());
        };
        if created.images.is_empty() {
            return Ok(Vec::new());
        }
        // EC2 keeps creation times to the millisecond; the run's start is
        // taken to the second below it.
        let since = Timestamp::from_second(since.as_second()).unwrap_or(since);
        let out = with_backoff(self, region, "DescribeImages", &[], || {
            client
                .describe_images()
                .owners("self")
                .filters(filter("name", &created.images))
                .send()
        })
        .await
        .map_err(|e| ProviderError::Api {
            operation: "DescribeImages",
            region: region.to_owned(),
            message: describe_error(&e),
        })?;
        let mut removed = Vec::new();
        for image in out.images().iter().filter_map(|i| image_info(region, i)) {
            // Claimed images belong to a recorded build, whatever their name.
            if image.owner.is_some() || image.created_at < since {
                continue;
            }
            let note = crate::provider::ImageProvider::delete(self, &image).await?;
            removed.push(match note {
                Some(note) => format!("{region}/image {} ({note})", image.image_id),
                None => format!("{region}/image {}", image.image_id),
            });
        }
        Ok(removed)
    }
}
