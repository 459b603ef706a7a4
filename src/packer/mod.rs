//! Everything about Packer: reading its output and the artifacts it reports,
//! and running it for one build (`kiln runner`).

pub mod artifacts;
pub mod created;
pub mod machine_readable;
pub mod plugins;
pub mod runner;

/// Variable names a template declares (`variable "name" { ... }`).
///
/// kiln sets its own variables only where a template declares them, since
/// Packer rejects values for undeclared `-var`s.
pub fn declared_variables(hcl: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for line in hcl.lines() {
        let rest = line.trim_start();
        let Some(rest) = rest.strip_prefix("variable") else {
            continue;
        };
        let rest = rest.trim_start();
        let Some(rest) = rest.strip_prefix('"') else {
            continue;
        };
        if let Some((name, _)) = rest.split_once('"') {
            out.insert(name.to_owned());
        }
    }
    out
}

/// A Packer version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Parses `packer version` output: `Packer v1.11.2` (first line).
    pub fn parse(output: &str) -> Option<Self> {
        let first = output.lines().next()?;
        let v = first.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
        let mut parts = v.split(['.', '-', '+']).map(|p| p.parse::<u32>());
        Some(Version(
            parts.next()?.ok()?,
            parts.next()?.ok()?,
            parts.next().and_then(Result::ok).unwrap_or(0),
        ))
    }

    /// `packer init` exists from 1.7.0 on.
    pub fn has_init(self) -> bool {
        self >= Version(1, 7, 0)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_declared_variables() {
        let hcl = r#"
variable "kiln_timestamp" { type = string }
  variable  "region" {
  default = "x"
}
# a comment mentioning variable "x" is not a declaration
locals { variable = "not a block" }
"#;
        let vars = declared_variables(hcl);
        assert!(vars.contains("kiln_timestamp"));
        assert!(vars.contains("region"));
        assert!(!vars.contains("not a block"));
        assert!(!vars.contains("x"));
    }

    #[test]
    fn versions() {
        assert_eq!(Version::parse("Packer v1.6.6\n"), Some(Version(1, 6, 6)));
        assert_eq!(
            Version::parse("Packer v1.11.2\n\nYour version of Packer is out of date!"),
            Some(Version(1, 11, 2))
        );
        assert!(!Version(1, 6, 6).has_init());
        assert!(Version(1, 11, 2).has_init());
        assert_eq!(Version::parse("garbage"), None);
    }
}
