//! OpenStack: Glance images, owned through properties. (Being written.)

use super::factory::{CredentialKeys, Credentials};

/// What an OpenStack credentials Secret holds (the `OS_*` names of
/// openrc files and clouds.yaml exports).
pub const CREDENTIAL_KEYS: CredentialKeys = CredentialKeys {
    required: &[
        &["OS_AUTH_URL"],
        &[
            "OS_APPLICATION_CREDENTIAL_ID",
            "OS_APPLICATION_CREDENTIAL_NAME",
            "OS_USERNAME",
            "OS_USER_ID",
        ],
        &["OS_APPLICATION_CREDENTIAL_SECRET", "OS_PASSWORD"],
    ],
    optional: &[
        "OS_PROJECT_ID",
        "OS_PROJECT_NAME",
        "OS_TENANT_ID",
        "OS_TENANT_NAME",
        "OS_USER_DOMAIN_NAME",
        "OS_USER_DOMAIN_ID",
        "OS_PROJECT_DOMAIN_NAME",
        "OS_PROJECT_DOMAIN_ID",
        "OS_DOMAIN_NAME",
        "OS_INTERFACE",
        "OS_ENDPOINT_TYPE",
        "OS_CACERT",
        "OS_INSECURE",
    ],
};

/// Placeholder until the module lands.
pub fn from_credentials(
    _endpoint: Option<String>,
    _credentials: &Credentials,
) -> super::Unverified {
    super::Unverified("OpenStack")
}
