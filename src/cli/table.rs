//! `kubectl get`-style tables, printed by the apiserver itself (server-side
//! printing of the CRDs' printer columns), so no kubectl is needed.

use anyhow::Context as _;
use kube::Client;

/// Fetches `path` (a list URL) as a Table and renders the default columns.
pub async fn render(client: &Client, path: &str) -> anyhow::Result<String> {
    let request = http::Request::get(path)
        .header(
            http::header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        )
        .body(Vec::new())
        .context("building the request")?;
    let text = client
        .request_text(request)
        .await
        .with_context(|| format!("GET {path}"))?;
    let table: serde_json::Value = serde_json::from_str(&text).context("the apiserver's Table")?;
    let columns: Vec<(usize, String)> = table["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, c)| c["priority"].as_i64().unwrap_or(0) == 0)
        .map(|(i, c)| (i, c["name"].as_str().unwrap_or_default().to_uppercase()))
        .collect();
    let rows: Vec<Vec<String>> = table["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            columns
                .iter()
                .map(|(i, _)| match &r["cells"][*i] {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "<none>".to_owned(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    Ok(format_rows(
        &columns.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>(),
        &rows,
    ))
}

/// Left-aligned columns separated by three spaces, like kubectl: no
/// borders, no spaces at line ends.
pub fn format_rows(header: &[String], rows: &[Vec<String>]) -> String {
    let mut table = comfy_table::Table::new();
    table
        .load_style(comfy_table::presets::NOTHING)
        .set_header(header)
        .add_rows(rows);
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    let mut out = table.trim_fmt();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let out = format_rows(
            &["NAME".into(), "READY".into()],
            &[
                vec!["web".into(), "True".into()],
                vec!["database".into(), "False".into()],
            ],
        );
        assert_eq!(out, "NAME       READY\nweb        True\ndatabase   False\n");
    }

    #[test]
    fn prints_kubectl_style_exactly() {
        let header = ["REGION", "IMAGE", "BUILD-ID", "LATEST"].map(String::from);
        let row = |cells: [&str; 4]| cells.map(String::from).to_vec();
        let out = format_rows(
            &header,
            &[
                row(["us-east-1", "ami-0123456789abcdef0", "b-2", "yes"]),
                row(["eu-west-1", "ami-1", "", ""]),
            ],
        );
        assert_eq!(
            out,
            "REGION      IMAGE                   BUILD-ID   LATEST\n\
             us-east-1   ami-0123456789abcdef0   b-2        yes\n\
             eu-west-1   ami-1\n"
        );
        // No rows: the header alone.
        assert_eq!(format_rows(&header[..2], &[]), "REGION   IMAGE\n");
    }
}
