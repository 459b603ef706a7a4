//! kiln's ownership as GCE labels. Label keys and values hold only lowercase
//! letters, digits, `_` and `-`, at most 63 characters, and keys start with a
//! letter (GCE's "Labeling resources" rules; the Discovery document leaves
//! labels a plain string map). Every part of the owner must fit whole:
//! a truncated or hashed name could not prove which ImageBuild an image
//! belongs to, so a name that does not fit is refused instead.

use std::collections::BTreeMap;

use kiln_core::retention::ImageOwner;

use crate::provider::{Owner, ProviderError};

/// `true` on every image kiln claimed.
pub const MANAGED: &str = "kiln-managed";
/// Namespace of the owning ImageBuild.
pub const NAMESPACE: &str = "kiln-namespace";
/// Name of the owning ImageBuild, with `.` written as `_`.
pub const NAME: &str = "kiln-name";
/// The build that made the image.
pub const BUILD: &str = "kiln-build";
/// The spec hash it was built from.
pub const SPEC: &str = "kiln-spec";
/// Set (to any value) by a user to protect an image from retention.
pub const KEEP: &str = "kiln-keep";
/// GCE's limit on a label key and on a label value.
pub const MAX_LEN: usize = 63;

fn allowed(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
}

/// Whether GCE accepts `value` as a label value.
pub fn is_valid_value(value: &str) -> bool {
    value.len() <= MAX_LEN && value.bytes().all(allowed)
}

/// Whether GCE accepts `key` as a label key.
pub fn is_valid_key(key: &str) -> bool {
    key.as_bytes().first().is_some_and(u8::is_ascii_lowercase) && is_valid_value(key)
}

/// The ImageBuild's name as a label value: `.` as `_` (Kubernetes names
/// never hold `_`, so this reverses). Refused, naming `metadata.name` and the
/// fix, when it does not fit GCE's rules.
pub fn encode_name(image_build: &str) -> Result<String, ProviderError> {
    let value = image_build.replace('.', "_");
    // `_` would come back as `.`: Kubernetes names never hold one.
    if image_build.contains('_') || !name_shaped(&value, true) {
        return Err(ProviderError::Invalid(format!(
            "metadata.name: '{image_build}' cannot be recorded in the GCP label {NAME}, which takes a name of lowercase letters, digits, '-' and '.' (written as '_') that starts and ends with a letter or digit; rename the ImageBuild"
        )));
    }
    if value.len() > MAX_LEN {
        return Err(ProviderError::Invalid(format!(
            "metadata.name: '{image_build}' has {} characters, and kiln records the ImageBuild's name on each GCP image in the label {NAME}, whose values hold at most {MAX_LEN}; shorten the ImageBuild's name to {MAX_LEN} characters or fewer",
            value.len()
        )));
    }
    Ok(value)
}

fn part(field: &str, label: &str, value: &str) -> Result<String, ProviderError> {
    if is_valid_value(value) && !value.is_empty() {
        return Ok(value.to_owned());
    }
    Err(ProviderError::Invalid(format!(
        "{field} '{value}' cannot be recorded in the GCP label {label} (lowercase letters, digits, '_' and '-', at most {MAX_LEN} characters)"
    )))
}

/// The owner as GCE labels. Build IDs are lowercase hex and a number, spec
/// hashes lowercase hex: both fit as they are.
pub fn encode(owner: &Owner) -> Result<BTreeMap<String, String>, ProviderError> {
    let name = encode_name(&owner.image_build)?;
    let namespace = part("metadata.namespace", NAMESPACE, &owner.namespace)?;
    let build = part("the build ID", BUILD, &owner.build_id.to_ascii_lowercase())?;
    let spec = part("the spec hash", SPEC, &owner.spec_hash)?;
    Ok(BTreeMap::from([
        (MANAGED.to_owned(), "true".to_owned()),
        (NAMESPACE.to_owned(), namespace),
        (NAME.to_owned(), name),
        (BUILD.to_owned(), build),
        (SPEC.to_owned(), spec),
    ]))
}

/// The owner kiln recorded in an image's labels; `None` (not kiln's, never
/// deleted) unless `kiln-managed=true` and a namespace and name that decode.
pub fn decode(labels: &BTreeMap<String, String>) -> Option<ImageOwner> {
    if labels.get(MANAGED).map(String::as_str) != Some("true") {
        return None;
    }
    let namespace = labels.get(NAMESPACE).filter(|n| dns_label(n, false))?;
    let name = labels.get(NAME).filter(|n| dns_label(n, true))?;
    Some(ImageOwner {
        namespace: namespace.clone(),
        image_build: name.replace('_', "."),
        build_id: labels.get(BUILD).cloned().unwrap_or_default(),
    })
}

/// What a Kubernetes name can be after encoding: lowercase letters, digits,
/// `-` (and `_` for a name's `.`), starting and ending alphanumeric.
fn name_shaped(s: &str, dots: bool) -> bool {
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    edge(s.as_bytes().first())
        && edge(s.as_bytes().last())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'_')
        })
}

fn dns_label(s: &str, dots: bool) -> bool {
    s.len() <= MAX_LEN && name_shaped(s, dots)
}

/// Whether a person protected the image (the label `kiln-keep`, any value).
pub fn keep(labels: &BTreeMap<String, String>) -> bool {
    labels.contains_key(KEEP)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(namespace: &str, image_build: &str) -> Owner {
        Owner {
            namespace: namespace.into(),
            image_build: image_build.into(),
            build_id: "3f2a9c01bd-2".into(),
            spec_hash: "0123456789abcdef".into(),
        }
    }

    #[test]
    fn owner_labels_round_trip() {
        let labels = encode(&owner("team-a", "base.ubuntu-24")).expect("encodes");
        assert_eq!(labels["kiln-name"], "base_ubuntu-24");
        assert_eq!(labels["kiln-managed"], "true");
        assert!(
            labels
                .iter()
                .all(|(k, v)| is_valid_key(k) && is_valid_value(v))
        );
        assert_eq!(
            decode(&labels),
            Some(ImageOwner {
                namespace: "team-a".into(),
                image_build: "base.ubuntu-24".into(),
                build_id: "3f2a9c01bd-2".into(),
            })
        );
    }

    #[test]
    fn a_name_of_63_fits_and_64_is_refused_with_the_fix() {
        let fits = "a".repeat(63);
        assert_eq!(encode_name(&fits).expect("fits"), fits);
        let long = format!("{}.b", "a".repeat(62));
        match encode_name(&long) {
            Err(ProviderError::Invalid(m)) => {
                assert!(m.starts_with("metadata.name:"), "{m}");
                assert!(
                    m.contains("64 characters") && m.contains("at most 63"),
                    "{m}"
                );
                assert!(m.contains("shorten the ImageBuild's name to 63"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            encode_name("Upper"),
            Err(ProviderError::Invalid(m)) if m.starts_with("metadata.name:")
        ));
    }

    #[test]
    fn labels_that_do_not_decode_are_not_kiln_s() {
        let full = encode(&owner("ns", "web")).expect("encodes");
        let without = |key: &str| {
            let mut l = full.clone();
            l.remove(key);
            decode(&l)
        };
        assert_eq!(without(MANAGED), None);
        assert_eq!(without(NAMESPACE), None);
        assert_eq!(without(NAME), None);
        assert_eq!(without(BUILD).map(|o| o.build_id), Some(String::new()));
        for (key, bad) in [
            (MANAGED, "yes"),
            (NAMESPACE, "-ns"),
            (NAMESPACE, ""),
            (NAME, "web_"),
            (NAMESPACE, "a_b"),
        ] {
            let mut l = full.clone();
            l.insert(key.into(), bad.into());
            assert_eq!(decode(&l), None, "{key}={bad}");
        }
        assert!(keep(&BTreeMap::from([(KEEP.into(), String::new())])));
        assert!(!keep(&full));
    }
}
