//! One way to make a provider, for the controller and the CLI alike: from
//! the provider type, the endpoint override and the credentials (the
//! ImageBuild's Secret, or the CLI's environment). Each provider says which
//! credential keys it reads; adding a cloud adds one arm to each match here.

use std::{collections::BTreeMap, sync::Arc};

use super::{ImageProvider, Unverified, aws, azure, digitalocean, gcp, openstack};
use crate::api::{ProviderSpec, ProviderType};

/// Credentials as key/value pairs, as a Secret or the environment holds them.
pub type Credentials = BTreeMap<String, String>;

/// The credential keys a provider reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialKeys {
    /// Each entry must be present under one of its names.
    pub required: &'static [&'static [&'static str]],
    /// Further keys it reads when present.
    pub optional: &'static [&'static str],
}

impl CredentialKeys {
    /// The required keys (by their first name) that `credentials` lacks.
    pub fn lacking(&self, credentials: &Credentials) -> Vec<&'static str> {
        self.required
            .iter()
            .filter(|names| !names.iter().any(|n| credentials.contains_key(*n)))
            .filter_map(|names| names.first().copied())
            .collect()
    }

    /// How to make a Secret this provider accepts, for messages.
    pub fn hint(&self) -> String {
        let names: Vec<&str> = self
            .required
            .iter()
            .filter_map(|n| n.first().copied())
            .collect();
        match names.as_slice() {
            [] => String::new(),
            [one] => format!(" with {one}"),
            [init @ .., last] => format!(" with {} and {last}", init.join(", ")),
        }
    }

    /// Every key it reads, for the CLI to take from the environment.
    fn all(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.required
            .iter()
            .flat_map(|n| n.iter().copied())
            .chain(self.optional.iter().copied())
    }
}

/// What a provider of `type_` reads from its Secret.
pub fn credential_keys(type_: ProviderType) -> CredentialKeys {
    match type_ {
        ProviderType::Aws => aws::CREDENTIAL_KEYS,
        ProviderType::Digitalocean => digitalocean::CREDENTIAL_KEYS,
        ProviderType::Openstack => openstack::CREDENTIAL_KEYS,
        ProviderType::Gcp => gcp::CREDENTIAL_KEYS,
        ProviderType::Azure => azure::CREDENTIAL_KEYS,
    }
}

/// The provider `spec` names, at its endpoint (the cloud's own when unset).
pub fn build(spec: &ProviderSpec, credentials: &Credentials) -> Arc<dyn ImageProvider> {
    let endpoint = spec.endpoint.clone();
    match spec.type_ {
        ProviderType::Aws => Arc::new(aws::Aws::from_credentials(endpoint, credentials)),
        // The CRD requires the settings for these types; a manifest that
        // skipped admission gets a provider that records images unverified.
        ProviderType::Gcp => match &spec.gcp {
            Some(settings) => Arc::new(gcp::from_credentials(endpoint, credentials, settings)),
            None => Arc::new(Unverified("GCP")),
        },
        ProviderType::Azure => match &spec.azure {
            Some(settings) => Arc::new(azure::from_credentials(endpoint, credentials, settings)),
            None => Arc::new(Unverified("Azure")),
        },
        ProviderType::Digitalocean => {
            Arc::new(digitalocean::from_credentials(endpoint, credentials))
        }
        ProviderType::Openstack => Arc::new(openstack::from_credentials(endpoint, credentials)),
    }
}

/// The credentials of `type_` found in the environment (the CLI's way).
pub fn credentials_from_env(type_: ProviderType) -> Credentials {
    credential_keys(type_)
        .all()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_owned(), v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_provider_names_what_its_secret_lacks() {
        let keys = credential_keys(ProviderType::Aws);
        let mut creds = Credentials::new();
        assert_eq!(
            keys.lacking(&creds),
            ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        );
        assert_eq!(
            keys.hint(),
            " with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        );
        creds.insert("AWS_ACCESS_KEY_ID".into(), "x".into());
        assert_eq!(keys.lacking(&creds), ["AWS_SECRET_ACCESS_KEY"]);

        let keys = credential_keys(ProviderType::Digitalocean);
        assert_eq!(keys.lacking(&Credentials::new()), ["DIGITALOCEAN_TOKEN"]);
        let alt = Credentials::from([("DIGITALOCEAN_API_TOKEN".into(), "t".into())]);
        assert!(keys.lacking(&alt).is_empty());
        assert_eq!(keys.hint(), " with DIGITALOCEAN_TOKEN");
    }
}
