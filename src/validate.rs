//! Client-side validation of kiln manifests against the same CRD schema and
//! CEL rules the apiserver enforces, for `kiln validate` without a cluster.
//!
//! The structural checks cover the OpenAPI keywords kiln's CRDs use (type,
//! required, enum, pattern, lengths, item and property counts); the CEL rules
//! run in kube's CEL validator after schema defaults are applied, as the
//! apiserver does at admission.

use serde_json::Value;

use crate::crdgen;

/// One problem, worded like the apiserver's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field, e.g. `spec.provider.regions`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Validates one manifest (a JSON value of a kiln kind).
pub fn manifest(value: &Value) -> Vec<Problem> {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let crd = crdgen::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind);
    let Some(crd) = crd else {
        return vec![Problem {
            field: "kind".into(),
            message: format!(
                "Unsupported value: {kind:?}: kiln validates ImageBuild and ImagePolicy"
            ),
        }];
    };
    if api_version != format!("{}/{}", crd.spec.group, crdgen_version(&crd)) {
        return vec![Problem {
            field: "apiVersion".into(),
            message: format!("Unsupported value: {api_version:?}: use kiln.dev/v1alpha1"),
        }];
    }
    let mut problems = Vec::new();
    if value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        problems.push(Problem {
            field: "metadata.name".into(),
            message: "Required value: name or generateName is required".into(),
        });
    }
    let Some(schema) = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
    else {
        return problems;
    };
    let schema = serde_json::to_value(schema).unwrap_or_default();
    // Like the apiserver: metadata is validated by the apiserver itself, not the schema.
    let mut object = value.clone();
    if let Some(o) = object.as_object_mut() {
        o.remove("apiVersion");
        o.remove("kind");
        o.remove("metadata");
    }
    structural(&schema, &object, "", &mut problems);
    if problems.is_empty() {
        // CEL runs only on structurally valid objects, as in the apiserver.
        if let Err(errors) = kube::core::cel::Validator::new().validate(&schema, value, None) {
            for e in errors.into_vec() {
                problems.push(Problem {
                    field: e.field_path.trim_start_matches('.').to_owned(),
                    message: format!("Invalid value: {}", e.message),
                });
            }
        }
    }
    problems
}

fn crdgen_version(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    crd.spec
        .versions
        .first()
        .map(|v| v.name.clone())
        .unwrap_or_default()
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn structural(schema: &Value, value: &Value, path: &str, out: &mut Vec<Problem>) {
    let mut push = |message: String| {
        out.push(Problem {
            field: path.to_owned(),
            message,
        })
    };
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) && !path.is_empty() {
            push("Invalid value: \"null\": must not be null".into());
        }
        return;
    }
    if schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
        && schema.get("type").is_none()
    {
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(value);
        let ok = actual == expected || (expected == "number" && actual == "integer");
        if !ok {
            push(format!(
                "Invalid value: \"{actual}\": must be of type {expected}"
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        push(format!(
            "Unsupported value: {value}: supported values: {}",
            list.join(", ")
        ));
    }
    match value {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                push(format!(
                    "Invalid value: {value}: must be at least {min} chars long"
                ));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                push(format!("Too long: may not be more than {max} bytes"));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(pattern) {
                    Ok(re) if !re.is_match(s) => push(format!(
                        "Invalid value: {value}: {path} in body should match '{pattern}'"
                    )),
                    _ => {}
                }
            }
        }
        Value::Number(n) => {
            if let (Some(min), Some(v)) =
                (schema.get("minimum").and_then(Value::as_f64), n.as_f64())
                && v < min
            {
                push(format!(
                    "Invalid value: {n}: {path} in body should be greater than or equal to {min}"
                ));
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                push(format!(
                    "Too many: {}: must have at most {max} items",
                    items.len()
                ));
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                push(format!(
                    "Invalid value: {}: {path} in body should have at least {min} items",
                    items.len()
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    structural(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(map) => {
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !map.contains_key(req) {
                    out.push(Problem {
                        field: join(path, req),
                        message: "Required value".into(),
                    });
                }
            }
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
                && map.len() as u64 > max
            {
                out.push(Problem {
                    field: path.to_owned(),
                    message: format!("Too many: {}: must have at most {max} items", map.len()),
                });
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            for (k, v) in map {
                let child = join(path, k);
                match (
                    properties.and_then(|p| p.get(k)),
                    schema.get("additionalProperties"),
                ) {
                    (Some(s), _) => structural(s, v, &child, out),
                    (None, Some(s)) if s.is_object() => structural(s, v, &child, out),
                    // Unknown fields: the apiserver prunes them; strict clients warn.
                    (None, _) if properties.is_some() => out.push(Problem {
                        field: child,
                        message: "unknown field (the apiserver would drop it)".into(),
                    }),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn build(spec: Value) -> Value {
        json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "x"}, "spec": spec})
    }

    #[test]
    fn a_valid_build_passes() {
        let v = build(
            json!({"provider": {"type": "aws", "regions": ["us-east-1"]}, "template": {"inline": "x"}}),
        );
        assert_eq!(manifest(&v), vec![]);
    }

    #[test]
    fn schema_and_cel_problems_name_the_field() {
        let v = build(
            json!({"provider": {"type": "vultr", "regions": ["us-east-1"]}, "template": {"inline": "x"}}),
        );
        let p = manifest(&v);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, "spec.provider.type");
        assert!(p[0].message.contains("Unsupported value: \"vultr\""));

        let v = build(json!({"provider": {"type": "aws", "regions": []}, "template": {}}));
        let text: Vec<String> = manifest(&v).iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("spec.template must set exactly one of")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("at least one region")),
            "{text:?}"
        );

        let v = build(
            json!({"provider": {"type": "aws", "regions": ["us-east-1"]}, "template": {"inline": "x"}, "timeout": "5 minutes"}),
        );
        let text: Vec<String> = manifest(&v).iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with("spec.timeout: ") && t.contains("should match")),
            "{text:?}"
        );
    }

    #[test]
    fn policies_are_checked_too() {
        let v = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImagePolicy", "metadata": {"name": "p"}, "spec": {"builds": {"names": ["a"]}, "keepLast": 0}});
        let text: Vec<String> = manifest(&v).iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("keepLast must be between 1 and 1000")),
            "{text:?}"
        );
    }

    #[test]
    fn other_kinds_are_refused() {
        let v = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        assert_eq!(manifest(&v)[0].field, "kind");
    }
}
