//! Packer plugins: what a template requires, what Packer says is missing, and
//! the message that tells the user how to add a plugin to kiln's image.
//!
//! kiln never downloads plugins while building: they are preinstalled in the
//! image (`PACKER_PLUGIN_PATH`), and `packer init` runs with downloads cut off
//! (see [`crate::packer::runner`]). A template that needs a plugin the image
//! lacks fails with a message naming the plugin, its version constraint and
//! the line to add to the image (docs/packer.md).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

/// Where the user reads how to add a plugin to kiln's image.
pub const DOCS_URL: &str =
    "https://github.com/kiln-dev/kiln/blob/main/docs/packer.md#adding-a-plugin";

/// A plugin a template declares in `packer { required_plugins { ... } }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequiredPlugin {
    /// The local name (`amazon` in `amazon = { ... }`).
    pub name: String,
    /// `github.com/hashicorp/amazon`.
    pub source: String,
    /// `>= 1.8.0`; empty when the template gives none.
    pub version: String,
}

/// A plugin Packer reported as required but not installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingPlugin {
    /// `github.com/hashicorp/digitalocean`.
    pub source: String,
    /// The version constraint (`>= 1.0.0`), empty when none is known.
    pub constraint: String,
}

/// The entries of a template's `required_plugins` blocks. A line-oriented
/// reading, enough for the `name = { source = "...", version = "..." }` form
/// Packer documents; comments are skipped.
pub fn required_plugins(hcl: &str) -> Vec<RequiredPlugin> {
    // Drop comments first, so a commented-out entry is not required.
    let text: String = hcl
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with('#') || t.starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let block = regex::Regex::new(r"required_plugins\s*\{").expect("regex");
    let entry =
        regex::Regex::new(r"(?s)([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*\{([^{}]*)\}").expect("regex");
    let attr = |body: &str, key: &str| {
        regex::Regex::new(&format!(r#"\b{key}\s*=\s*"([^"]*)""#))
            .expect("regex")
            .captures(body)
            .map(|c| c[1].to_owned())
    };
    let mut out = Vec::new();
    for m in block.find_iter(&text) {
        // The block's body: up to the brace that closes it.
        let rest = &text[m.end()..];
        let mut depth = 1usize;
        let mut end = rest.len();
        for (i, ch) in rest.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        for e in entry.captures_iter(&rest[..end]) {
            if let Some(source) = attr(&e[2], "source") {
                out.push(RequiredPlugin {
                    name: e[1].to_owned(),
                    source,
                    version: attr(&e[2], "version").unwrap_or_default(),
                });
            }
        }
    }
    out
}

/// The plugins Packer's output says are missing:
/// - `packer validate` and `packer build` (Packer ≥ 1.7) print
///   `Error: Missing plugins`, then `* <source> <constraint>` lines;
/// - `packer init`, which kiln runs without downloads, prints
///   `Failed getting the "<source>" plugin:` per plugin it could not find
///   installed; the constraint then comes from the template.
///
/// Sorted by source (Packer lists them in no fixed order), no duplicates.
pub fn missing_plugins(output: &str, required: &[RequiredPlugin]) -> Vec<MissingPlugin> {
    let mut out = Vec::new();
    if let Some((_, list)) =
        output.split_once("The following plugins are required, but not installed:")
    {
        for line in list.lines().map(str::trim) {
            if line.is_empty() {
                continue;
            }
            let Some(item) = line.strip_prefix("* ") else {
                break;
            };
            let (source, constraint) = item.split_once(char::is_whitespace).unwrap_or((item, ""));
            out.push(MissingPlugin {
                source: source.to_owned(),
                constraint: constraint.trim().to_owned(),
            });
        }
    }
    let failed = regex::Regex::new(r#"Failed getting the "([^"]+)" plugin"#).expect("regex");
    for c in failed.captures_iter(output) {
        let source = c[1].to_owned();
        let constraint = required
            .iter()
            .find(|r| same_source(&r.source, &source))
            .map(|r| r.version.clone())
            .unwrap_or_default();
        out.push(MissingPlugin { source, constraint });
    }
    out.sort_by(|a, b| a.source.cmp(&b.source));
    out.dedup_by(|a, b| a.source == b.source);
    out
}

/// Sources compare without case and without a `https://` prefix.
fn same_source(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.trim_start_matches("https://")
            .trim_end_matches('/')
            .to_ascii_lowercase()
    };
    norm(a) == norm(b)
}

/// Plugins `packer plugins installed` lists, as `source vX.Y.Z`: its lines are
/// paths ending in `<source>/packer-plugin-<name>_v<version>_x<api>_<os>_<arch>`.
pub fn installed_plugins(listing: &str) -> Vec<String> {
    let file = regex::Regex::new(
        r"(?:^|/)((?:[^/\s]+/){2}[^/\s]+)/packer-plugin-[^/\s]+?_v([0-9][^_/\s]*)_x[0-9.]+_[a-z0-9]+_[a-z0-9]+$",
    )
    .expect("regex");
    let mut out: Vec<String> = listing
        .lines()
        .map(str::trim)
        .filter_map(|l| file.captures(l).map(|c| format!("{} v{}", &c[1], &c[2])))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The failure message for missing plugins: what is missing, where Packer
/// looked, what is there, and how to add it to kiln's image.
pub fn missing_message(
    missing: &[MissingPlugin],
    plugin_dir: &str,
    installed: &[String],
) -> String {
    let mut text = String::from(
        "Packer plugins required by the template are not installed in this image (kiln runs `packer init` without downloading):\n",
    );
    for m in missing {
        if m.constraint.is_empty() {
            text.push_str(&format!("* {} (any version)\n", m.source));
        } else {
            text.push_str(&format!("* {} {}\n", m.source, m.constraint));
        }
    }
    text.push_str(&format!("Plugin directory: {plugin_dir}"));
    if installed.is_empty() {
        text.push_str(" (no plugins installed)\n");
    } else {
        // Bounded, so that the message keeps its head within a Pod's
        // termination message.
        const SHOWN: usize = 8;
        let mut list = installed
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if installed.len() > SHOWN {
            list.push_str(&format!(" and {} more", installed.len() - SHOWN));
        }
        text.push_str(&format!("; installed: {list}\n"));
    }
    text.push_str("Add it to the image that runs the build (the controller's --runner-image) with a Dockerfile FROM kiln's image:\n");
    for m in missing {
        let version = if m.constraint.is_empty() {
            String::new()
        } else {
            format!(", \"{}\"", m.constraint)
        };
        text.push_str(&format!(
            "  RUN [\"packer\", \"plugins\", \"install\", \"{}\"{version}]\n",
            m.source
        ));
    }
    text.push_str(&format!(
        "or, offline, `packer plugins install --path <plugin binary> <source>`; see {DOCS_URL}"
    ));
    text
}

/// A stand-in proxy on loopback that refuses every request: `packer init`
/// runs with `HTTPS_PROXY` pointing here, so it can never download a plugin
/// (it finds installed ones without the network), fails at once instead of
/// waiting on a network it may not have, and kiln knows whether it tried.
pub struct NoDownload {
    addr: SocketAddr,
    attempts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl NoDownload {
    /// Listens on a free loopback port; every connection is closed at once.
    pub async fn start() -> std::io::Result<NoDownload> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let attempts = Arc::new(AtomicUsize::new(0));
        let counted = attempts.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                drop(conn);
            }
        });
        Ok(NoDownload {
            addr,
            attempts,
            task,
        })
    }

    /// The proxy URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many connections Packer made (each a download attempt).
    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Points a command's proxies here: Go's HTTP client reads these, and
    /// sends even `localhost`-free hosts through them; `NO_PROXY` and a
    /// GitHub token could let a request around it, so they go.
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        let url = self.url();
        for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
            cmd.env(var, &url);
        }
        for var in ["NO_PROXY", "no_proxy", "PACKER_GITHUB_API_TOKEN"] {
            cmd.env_remove(var);
        }
    }
}

impl Drop for NoDownload {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.8.0"
    }
    # vsphere = { source = "github.com/hashicorp/vsphere", version = ">= 9" }
    digitalocean = { version = "~> 1.0", source = "github.com/digitalocean/digitalocean" }
    openstack = {
      source = "github.com/hashicorp/openstack"
    }
  }
}
source "amazon-ebs" "x" { region = "us-east-1" }
"#;

    #[test]
    fn reads_required_plugins() {
        let got = required_plugins(TEMPLATE);
        assert_eq!(
            got,
            vec![
                RequiredPlugin {
                    name: "amazon".into(),
                    source: "github.com/hashicorp/amazon".into(),
                    version: ">= 1.8.0".into(),
                },
                RequiredPlugin {
                    name: "digitalocean".into(),
                    source: "github.com/digitalocean/digitalocean".into(),
                    version: "~> 1.0".into(),
                },
                RequiredPlugin {
                    name: "openstack".into(),
                    source: "github.com/hashicorp/openstack".into(),
                    version: String::new(),
                },
            ]
        );
        assert!(required_plugins("source \"null\" \"n\" {}").is_empty());
    }

    /// Packer 1.16's `packer validate` / `packer build` text
    /// (hack/packer/README.md), list order as Packer printed it.
    #[test]
    fn parses_validate_missing_plugins() {
        let out = "\nError: Missing plugins\n\nThe following plugins are required, but not installed:\n\n* github.com/hashicorp/googlecompute >= 1.0.0\n* github.com/hashicorp/azure >= 1.0.0\n* github.com/hashicorp/amazon >= 1.9.0\n\nDid you run packer init for this project ?\n";
        let got = missing_plugins(out, &[]);
        assert_eq!(
            got,
            vec![
                MissingPlugin {
                    source: "github.com/hashicorp/amazon".into(),
                    constraint: ">= 1.9.0".into()
                },
                MissingPlugin {
                    source: "github.com/hashicorp/azure".into(),
                    constraint: ">= 1.0.0".into()
                },
                MissingPlugin {
                    source: "github.com/hashicorp/googlecompute".into(),
                    constraint: ">= 1.0.0".into()
                },
            ]
        );
    }

    /// Packer 1.16's `packer init` with downloads cut off.
    #[test]
    fn parses_init_failures_with_constraints_from_the_template() {
        let out = "Failed getting the \"github.com/digitalocean/digitalocean\" plugin:\n1 error occurred:\n\t* Get \"https://api.github.com/repos/digitalocean/packer-plugin-digitalocean/git/matching-refs/tags\": proxyconnect tcp: EOF\n\n\nFailed getting the \"github.com/hashicorp/openstack\" plugin:\n1 error occurred:\n\t* Get \"https://releases.hashicorp.com/packer-plugin-openstack/index.json\": proxyconnect tcp: EOF\n";
        let got = missing_plugins(out, &required_plugins(TEMPLATE));
        assert_eq!(
            got,
            vec![
                MissingPlugin {
                    source: "github.com/digitalocean/digitalocean".into(),
                    constraint: "~> 1.0".into()
                },
                MissingPlugin {
                    source: "github.com/hashicorp/openstack".into(),
                    constraint: String::new()
                },
            ]
        );
        assert!(missing_plugins("Error: Unsupported argument\n\n* foo\n", &[]).is_empty());
    }

    #[test]
    fn lists_installed_plugins() {
        let listing = "/opt/plugins/github.com/hashicorp/amazon/packer-plugin-amazon_v1.8.1_x5.0_linux_amd64\n/opt/plugins/github.com/digitalocean/digitalocean/packer-plugin-digitalocean_v1.4.1_x5.0_linux_amd64\nnot a plugin\n";
        assert_eq!(
            installed_plugins(listing),
            vec![
                "github.com/digitalocean/digitalocean v1.4.1",
                "github.com/hashicorp/amazon v1.8.1"
            ]
        );
    }

    #[test]
    fn message_names_the_plugin_its_constraint_and_the_fix() {
        let missing = [MissingPlugin {
            source: "github.com/hashicorp/vsphere".into(),
            constraint: ">= 1.2.0".into(),
        }];
        let text = missing_message(
            &missing,
            "/usr/local/share/packer/plugins",
            &["github.com/hashicorp/amazon v1.8.1".into()],
        );
        assert!(
            text.contains("* github.com/hashicorp/vsphere >= 1.2.0"),
            "{text}"
        );
        assert!(
            text.contains("installed: github.com/hashicorp/amazon v1.8.1"),
            "{text}"
        );
        assert!(
            text.contains(r#"RUN ["packer", "plugins", "install", "github.com/hashicorp/vsphere", ">= 1.2.0"]"#),
            "{text}"
        );
        assert!(text.contains("packer plugins install --path"), "{text}");
        assert!(text.contains(DOCS_URL), "{text}");
        assert!(
            text.len() < super::super::runner::MAX_MESSAGE,
            "{}",
            text.len()
        );
        let many: Vec<String> = (0..30)
            .map(|i| format!("github.com/x/p{i} v1.0.0"))
            .collect();
        let text = missing_message(&missing, "/p", &many);
        assert!(text.contains("p7 v1.0.0 and 22 more"), "{text}");
        assert!(text.len() < super::super::runner::MAX_MESSAGE);
    }

    #[tokio::test]
    async fn the_no_download_proxy_counts_and_refuses() {
        let proxy = NoDownload::start().await.expect("proxy");
        assert_eq!(proxy.attempts(), 0);
        let addr = proxy.url().trim_start_matches("http://").to_owned();
        let mut conn = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        use tokio::io::AsyncReadExt as _;
        let mut buf = [0u8; 8];
        // Closed by the proxy without a byte.
        assert_eq!(conn.read(&mut buf).await.unwrap_or(0), 0);
        assert_eq!(proxy.attempts(), 1);
    }
}
