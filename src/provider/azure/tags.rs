//! kiln's ownership as Azure resource tags. Tag names may not hold `/` (nor
//! `<>%&\?`), so kiln's are `kiln-…`; ARM compares tag names without regard
//! to case and keeps values as given, so names are read that way too.

use std::collections::BTreeMap;

use kiln_core::retention::ImageOwner;

use crate::provider::Owner;

/// On every image kiln claimed: `true`.
pub const MANAGED: &str = "kiln-managed";
/// Namespace of the owning ImageBuild.
pub const NAMESPACE: &str = "kiln-namespace";
/// Name of the owning ImageBuild.
pub const NAME: &str = "kiln-name";
/// The build that made the image (also what finds a version Packer made
/// when its artifact names none: set it in the template's `azure_tags`).
pub const BUILD: &str = "kiln-build";
/// The spec hash of that build.
pub const SPEC: &str = "kiln-spec";
/// Put on by a user (any value) to protect an image from retention.
pub const KEEP: &str = "kiln-keep";
/// When kiln first claimed a managed image (RFC 3339): its creation time
/// where ARM does not give one (`systemData.createdAt`).
pub const CLAIMED: &str = "kiln-claimed";

/// The owner as tags.
pub fn owner_tags(owner: &Owner) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED.to_owned(), "true".to_owned()),
        (NAMESPACE.to_owned(), owner.namespace.clone()),
        (NAME.to_owned(), owner.image_build.clone()),
        (BUILD.to_owned(), owner.build_id.clone()),
        (SPEC.to_owned(), owner.spec_hash.clone()),
    ])
}

/// The value of tag `name`, whatever the case of its name; `None` when it
/// is missing, or present twice with different values.
pub fn get<'t>(tags: &'t BTreeMap<String, String>, name: &str) -> Option<&'t str> {
    let mut found = tags
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str());
    let first = found.next()?;
    found.all(|v| v == first).then_some(first)
}

/// Whether tag `name` is there at all.
pub fn has(tags: &BTreeMap<String, String>, name: &str) -> bool {
    tags.keys().any(|k| k.eq_ignore_ascii_case(name))
}

/// The owner kiln recorded in an image's tags; `None` unless `kiln-managed`
/// is `true` and namespace and name are a Kubernetes namespace and object
/// name (so a hand-made or half-written tag set is never an owner).
pub fn decode_owner(tags: &BTreeMap<String, String>) -> Option<ImageOwner> {
    if !get(tags, MANAGED)?.eq_ignore_ascii_case("true") {
        return None;
    }
    let namespace = get(tags, NAMESPACE)?;
    let name = get(tags, NAME)?;
    let label = |s: &str, max: usize, also: &[u8]| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || also.contains(&b)
            })
    };
    if !label(namespace, 63, b"") || !label(name, 253, b".") {
        return None;
    }
    Some(ImageOwner {
        namespace: namespace.to_owned(),
        image_build: name.to_owned(),
        build_id: get(tags, BUILD).unwrap_or_default().to_owned(),
    })
}

/// `existing` with the owner's tags set (replacing any spelling of their
/// names), everything else kept. `None` when nothing would change.
pub fn merged(
    existing: &BTreeMap<String, String>,
    owner: &BTreeMap<String, String>,
) -> Option<BTreeMap<String, String>> {
    if owner
        .iter()
        .all(|(k, v)| get(existing, k) == Some(v.as_str()))
    {
        return None;
    }
    let mut out: BTreeMap<String, String> = existing
        .iter()
        .filter(|(k, _)| !owner.keys().any(|o| o.eq_ignore_ascii_case(k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.extend(owner.iter().map(|(k, v)| (k.clone(), v.clone())));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner {
            namespace: "team-a".into(),
            image_build: "ubuntu.24-04".into(),
            build_id: "3f2a9c01bd-2".into(),
            spec_hash: "0123456789abcdef".into(),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn owner_tags_round_trip_and_are_valid_tag_names() {
        let t = owner_tags(&owner());
        assert!(
            t.keys()
                .all(|k| !k.contains(['/', '<', '>', '%', '&', '\\', '?']))
        );
        assert_eq!(
            decode_owner(&t),
            Some(ImageOwner {
                namespace: "team-a".into(),
                image_build: "ubuntu.24-04".into(),
                build_id: "3f2a9c01bd-2".into(),
            })
        );
        // ARM may give the names back in another case.
        let upper: BTreeMap<String, String> = t
            .iter()
            .map(|(k, v)| (k.to_uppercase(), v.clone()))
            .collect();
        assert_eq!(decode_owner(&upper), decode_owner(&t));
    }

    #[test]
    fn foreign_and_half_written_tags_are_nobodys() {
        for bad in [
            map(&[]),
            map(&[("kiln-namespace", "a"), ("kiln-name", "b")]),
            map(&[
                ("kiln-managed", "false"),
                ("kiln-namespace", "a"),
                ("kiln-name", "b"),
            ]),
            map(&[("kiln-managed", "true"), ("kiln-name", "b")]),
            map(&[
                ("kiln-managed", "true"),
                ("kiln-namespace", "A"),
                ("kiln-name", "b"),
            ]),
            map(&[
                ("kiln-managed", "true"),
                ("kiln-namespace", "a"),
                ("kiln-name", "b/c"),
            ]),
            map(&[
                ("kiln-managed", "true"),
                ("kiln-namespace", ""),
                ("kiln-name", "b"),
            ]),
            map(&[
                ("kiln-managed", "true"),
                ("kiln-namespace", "a"),
                ("kiln-name", "b"),
                ("KILN-NAME", "c"),
            ]),
        ] {
            assert_eq!(decode_owner(&bad), None, "{bad:?}");
        }
        let ok = map(&[
            ("kiln-managed", "True"),
            ("kiln-namespace", "a"),
            ("kiln-name", "b"),
        ]);
        assert_eq!(decode_owner(&ok).map(|o| o.build_id), Some(String::new()));
    }

    #[test]
    fn merging_keeps_other_tags_and_replaces_kilns() {
        let ours = owner_tags(&owner());
        let existing = map(&[("env", "prod"), ("KILN-BUILD", "old"), ("kiln-keep", "")]);
        let m = merged(&existing, &ours).expect("changes");
        assert_eq!(m.get("env").map(String::as_str), Some("prod"));
        assert!(m.contains_key("kiln-keep"));
        assert!(!m.contains_key("KILN-BUILD"));
        assert_eq!(get(&m, BUILD), Some("3f2a9c01bd-2"));
        assert_eq!(merged(&m, &ours), None, "already tagged");
    }
}
