//! Packer's `-machine-readable` output: `timestamp,target,type,data...` lines.
//!
//! Packer writes commas inside a field as `%!(PACKER_COMMA)` and newlines as a
//! literal `\n`; both are decoded here.

/// One decoded line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Unix timestamp.
    pub timestamp: i64,
    /// Build name (`amazon-ebs.base`), empty for global messages.
    pub target: String,
    /// Message type: `ui`, `artifact`, `artifact-count`, `error`, ...
    pub kind: String,
    /// Remaining fields, decoded.
    pub data: Vec<String>,
}

/// Decodes a field: `%!(PACKER_COMMA)` becomes `,`, `\n` and `\r` become line
/// breaks.
pub fn decode_field(field: &str) -> String {
    field
        .replace("%!(PACKER_COMMA)", ",")
        .replace("\\n", "\n")
        .replace("\\r", "\r")
}

/// Parses one line; `None` for lines that are not machine-readable (plugins
/// sometimes print plain text).
pub fn parse_line(line: &str) -> Option<Line> {
    let line = line.trim_end_matches(['\r', '\n']);
    let mut fields = line.split(',');
    let timestamp = fields.next()?.parse().ok()?;
    let target = fields.next()?.to_owned();
    let kind = fields.next()?.to_owned();
    if kind.is_empty() {
        return None;
    }
    Some(Line {
        timestamp,
        target,
        kind,
        data: fields.map(decode_field).collect(),
    })
}

/// One artifact as Packer reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Artifact {
    /// Build name that produced it.
    pub target: String,
    /// Builder ID, e.g. `mitchellh.amazonebs`.
    pub builder_id: String,
    /// The artifact ID, decoded.
    pub id: String,
    /// Human-readable description.
    pub description: String,
}

/// What a machine-readable stream says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Artifacts, in order, without duplicates (post-processors such as
    /// `manifest` pass the builder's artifact through again).
    pub artifacts: Vec<Artifact>,
    /// Error messages (`ui,error` and per-build `error` lines).
    pub errors: Vec<String>,
}

impl Summary {
    /// Collects artifacts and errors from a whole stream.
    pub fn from_output(output: &str) -> Self {
        let mut summary = Summary::default();
        let mut current: Option<Artifact> = None;
        for line in output.lines().filter_map(parse_line) {
            match line.kind.as_str() {
                "artifact" => {
                    let (Some(sub), rest) =
                        (line.data.get(1), line.data.get(2..).unwrap_or_default())
                    else {
                        continue;
                    };
                    let value = rest.join(",");
                    match sub.as_str() {
                        "builder-id" => {
                            summary.push(current.take());
                            current = Some(Artifact {
                                target: line.target.clone(),
                                builder_id: value,
                                ..Default::default()
                            });
                        }
                        "id" => {
                            if let Some(a) = current.as_mut() {
                                a.id = value;
                            }
                        }
                        "string" => {
                            if let Some(a) = current.as_mut() {
                                a.description = value;
                            }
                        }
                        "end" => summary.push(current.take()),
                        _ => {}
                    }
                }
                "error" => summary.errors.push(line.data.join(",")),
                "ui" if line.data.first().is_some_and(|level| level == "error") => {
                    summary.errors.push(line.data[1..].join(","));
                }
                _ => {}
            }
        }
        summary.push(current.take());
        summary
    }

    fn push(&mut self, artifact: Option<Artifact>) {
        let Some(a) = artifact else { return };
        if a.id.is_empty() {
            return;
        }
        if !self
            .artifacts
            .iter()
            .any(|x| x.builder_id == a.builder_id && x.id == a.id)
        {
            self.artifacts.push(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from Debian's packer 1.6.6 building amazon-ebs against moto, with
    // a manifest post-processor (which repeats the artifact as artifact 1).
    const AMAZON: &str = r"1795344994,amazon-ebs.x,artifact-count,2
1795344994,amazon-ebs.x,artifact,0,builder-id,mitchellh.amazonebs
1795344994,amazon-ebs.x,artifact,0,id,eu-west-1:ami-6e5ef68257e909af9%!(PACKER_COMMA)us-east-1:ami-5b2c62e32bc3a9860
1795344994,amazon-ebs.x,artifact,0,string,AMIs were created:\neu-west-1: ami-6e5ef68257e909af9\nus-east-1: ami-5b2c62e32bc3a9860\n
1795344994,amazon-ebs.x,artifact,0,files-count,0
1795344994,amazon-ebs.x,artifact,0,end
1795344994,amazon-ebs.x,artifact,1,builder-id,mitchellh.amazonebs
1795344994,amazon-ebs.x,artifact,1,id,eu-west-1:ami-6e5ef68257e909af9%!(PACKER_COMMA)us-east-1:ami-5b2c62e32bc3a9860
1795344994,amazon-ebs.x,artifact,1,string,AMIs were created:\neu-west-1: ami-6e5ef68257e909af9\nus-east-1: ami-5b2c62e32bc3a9860\n
1795344994,amazon-ebs.x,artifact,1,files-count,0
1795344994,amazon-ebs.x,artifact,1,end
";

    #[test]
    fn decodes_commas_and_newlines() {
        let line = parse_line(r"1,b,ui,say,a%!(PACKER_COMMA)b\nc").expect("parses");
        assert_eq!(line.data, vec!["say".to_owned(), "a,b\nc".to_owned()]);
    }

    #[test]
    fn collects_artifacts_once() {
        let summary = Summary::from_output(AMAZON);
        assert_eq!(summary.artifacts.len(), 1, "{summary:?}");
        let a = &summary.artifacts[0];
        assert_eq!(a.builder_id, "mitchellh.amazonebs");
        assert_eq!(
            a.id,
            "eu-west-1:ami-6e5ef68257e909af9,us-east-1:ami-5b2c62e32bc3a9860"
        );
        assert!(a.description.contains("\nus-east-1: ami-5b2c62e32bc3a9860"));
        assert!(summary.errors.is_empty());
    }

    #[test]
    fn collects_errors() {
        let out = r"1795344998,,ui,error,Build 'amazon-ebs.x' errored: no valid credential sources\n
1795344998,,error-count,1
1795344998,amazon-ebs.x,error,no valid credential sources%!(PACKER_COMMA) really
not machine readable
";
        let summary = Summary::from_output(out);
        assert_eq!(summary.errors.len(), 2);
        assert!(summary.errors[1].ends_with("sources, really"));
        assert!(summary.artifacts.is_empty());
    }

    #[test]
    fn ignores_garbage() {
        assert_eq!(parse_line("hello, world"), None);
        assert_eq!(parse_line(""), None);
    }
}
