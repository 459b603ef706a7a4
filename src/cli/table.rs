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

/// Left-aligned columns separated by three spaces, like kubectl.
pub fn format_rows(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("   ").trim_end().to_owned()
    };
    let mut out = line(header);
    for row in rows {
        out.push('\n');
        out.push_str(&line(row));
    }
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
}
