//! Deterministic build identity: a restarted controller computes the same IDs
//! and adopts the running build instead of starting a second one.

use sha2::{Digest, Sha256};

use crate::api::ImageBuildSpec;

fn hex(bytes: &[u8], len: usize) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()[..len].to_owned()
}

/// What a build consumes beyond the spec: the template text and the values of
/// variables from ConfigMaps and Secrets (only their hash is kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedInputs {
    /// The template's HCL.
    pub template: String,
    /// Where the template came from, recorded with the image.
    pub template_revision: Option<String>,
    /// Variables from `variablesFrom`, in order of precedence applied.
    pub referenced_variables: std::collections::BTreeMap<String, String>,
}

/// Hash of everything that shapes the image: provider, template source and
/// text, variables and their referenced values, parent. Fields that only say
/// when or how to build (schedule, suspend, timeout, retry, executor) are out,
/// so changing them starts no build.
pub fn spec_hash(spec: &ImageBuildSpec, inputs: &ResolvedInputs) -> String {
    let shaping = serde_json::json!({
        "provider": spec.provider,
        "template": spec.template,
        "variables": spec.variables,
        "variablesFrom": spec.variables_from,
        "parent": spec.parent,
    });
    let mut h = Sha256::new();
    h.update(shaping.to_string().as_bytes());
    h.update([0]);
    h.update(inputs.template.as_bytes());
    for (k, v) in &inputs.referenced_variables {
        h.update([0]);
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
    }
    hex(&h.finalize(), 16)
}

/// A build's identity without the attempt: the object, the spec hash and the
/// rebuild request it answers (empty when none).
pub fn build_key(uid: &str, spec_hash: &str, request: &str) -> String {
    let mut h = Sha256::new();
    for part in [uid, spec_hash, request] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize(), 10)
}

/// `<key>-<attempt>`.
pub fn build_id(key: &str, attempt: i32) -> String {
    format!("{key}-{attempt}")
}

/// Job name for a build: `kiln-<name>-<build id>`, within the 63 characters a
/// Job's label value allows.
pub fn job_name(image_build: &str, build_id: &str) -> String {
    let room = 63 - "kiln--".len() - build_id.len();
    let mut name: String = image_build.chars().take(room).collect();
    while name.ends_with(['-', '.']) {
        name.pop();
    }
    format!("kiln-{name}-{build_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ImageBuildSpec {
        serde_json::from_value(serde_json::json!({
            "provider": {"type": "aws", "regions": ["us-east-1"]},
            "template": {"inline": "x"},
            "variables": {"a": "1"}
        }))
        .expect("spec")
    }

    #[test]
    fn hash_ignores_when_and_how() {
        let inputs = ResolvedInputs {
            template: "x".into(),
            ..Default::default()
        };
        let base = spec_hash(&spec(), &inputs);
        let mut s = spec();
        s.suspend = true;
        s.schedule = Some("@daily".into());
        assert_eq!(spec_hash(&s, &inputs), base);
        s.variables.insert("a".into(), "2".into());
        assert_ne!(spec_hash(&s, &inputs), base);
        let changed = ResolvedInputs {
            template: "y".into(),
            ..Default::default()
        };
        assert_ne!(spec_hash(&spec(), &changed), base);
        assert_eq!(base.len(), 16);
    }

    #[test]
    fn keys_are_deterministic_and_distinct() {
        assert_eq!(build_key("uid", "h", ""), build_key("uid", "h", ""));
        assert_ne!(
            build_key("uid", "h", ""),
            build_key("uid", "h", "2026-11-22T10:00:00Z")
        );
        assert_ne!(build_key("uid", "h", ""), build_key("uid2", "h", ""));
    }

    #[test]
    fn job_names_fit() {
        let long = "a".repeat(100);
        let name = job_name(&long, "0123456789-10");
        assert!(name.len() <= 63, "{name}");
        assert_eq!(job_name("base-ami", "abc-1"), "kiln-base-ami-abc-1");
    }
}
