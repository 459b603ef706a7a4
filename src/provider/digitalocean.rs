//! DigitalOcean: snapshots, owned through tags. (Being written.)

use super::factory::{CredentialKeys, Credentials};

/// What a DigitalOcean credentials Secret holds.
pub const CREDENTIAL_KEYS: CredentialKeys = CredentialKeys {
    required: &[&["DIGITALOCEAN_TOKEN", "DIGITALOCEAN_API_TOKEN"]],
    optional: &["DIGITALOCEAN_API_URL"],
};

/// Placeholder until the module lands.
pub fn from_credentials(
    _endpoint: Option<String>,
    _credentials: &Credentials,
) -> super::Unverified {
    super::Unverified("DigitalOcean")
}
