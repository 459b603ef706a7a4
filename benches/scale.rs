//! Benchmark (not a test): a cold `kiln controller` on one replica facing
//! N ImageBuilds and N/10 ImagePolicies that are already up to date.
//!
//! For each size (`BENCH_SCALE`, default `1000,3000,10000`; cumulative on one
//! control plane) it creates the objects, writes the status the controller
//! itself would write for an up-to-date build (computed with kiln's own
//! identity and status functions) and for an evaluated policy, then starts
//! `kiln controller` cold and measures:
//! - convergence: seconds from start until `kiln_reconciles_total` reaches
//!   N + N/10 and stays flat for 2 s (cap 300 s);
//! - peak RSS (VmHWM) and peak open sockets of the controller process;
//! - apiserver requests by verb and code (`apiserver_request_total` delta,
//!   scraped after the controller exited so its WATCHes are counted), 429s,
//!   and writes to imagebuilds/imagepolicies (should be 0: all up to date);
//! - cloud calls: HTTP/1.1 requests that reach moto through a counting proxy.
//!
//! Run with `cargo bench --profile dev --bench scale` (or `make bench`).
//! Prints; never asserts.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use k8s_openapi::{
    api::core::v1::{Namespace, Secret},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kiln::{
    api::{ImageBuild, ImageBuildStatus, ImagePolicy, ImageRecord, RegionArtifact},
    image_build::{identity, status},
};
use kiln_core::retention::status::{Evaluation, evaluated};
use kiln_testenv::{ControlPlane, Moto, Options};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    process::Command,
};

const NS: &str = "scale";
const REGION: &str = "us-east-1";
const IN_FLIGHT: usize = 32;
const FIELD_MANAGER: &str = "kiln";
const CAP: Duration = Duration::from_secs(300);
const FLAT: Duration = Duration::from_secs(2);

/// A template that is never built (every build is up to date, and suspended).
const TEMPLATE: &str = r#"
variable "kiln_build_id" { type = string }
source "null" "scale" { communicator = "none" }
build {
  sources = ["source.null.scale"]
}
"#;

fn build_name(i: usize) -> String {
    format!("b-{i:05}")
}

fn policy_name(j: usize) -> String {
    format!("p-{j:04}")
}

// ---------------------------------------------------------------- cloud proxy

/// Counts what reaches moto: connections, bytes, and HTTP/1.1 request lines
/// in the client-to-server direction.
#[derive(Default)]
struct CloudCounter {
    connections: AtomicU64,
    requests: AtomicU64,
    bytes_up: AtomicU64,
    /// `Action=<name>` seen in request bodies (EC2's query API), by name.
    actions: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl CloudCounter {
    fn snapshot(&self) -> (u64, u64, u64, BTreeMap<String, u64>) {
        (
            self.connections.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
            self.bytes_up.load(Ordering::Relaxed),
            self.actions.lock().map(|a| a.clone()).unwrap_or_default(),
        )
    }
}

async fn proxy(upstream: String, counter: Arc<CloudCounter>) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let upstream = upstream.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                counter.connections.fetch_add(1, Ordering::Relaxed);
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut sr, mut sw) = server.into_split();
                let (mut cr, mut cw) = client.split();
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    // The last bytes of the previous read, so a request line
                    // split across reads is still counted once.
                    let mut tail: Vec<u8> = Vec::new();
                    const NEEDLE: &[u8] = b" HTTP/1.1\r\n";
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        counter.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
                        let mut hay = std::mem::take(&mut tail);
                        let keep_from = hay.len();
                        hay.extend_from_slice(&buf[..n]);
                        let found = hay
                            .windows(NEEDLE.len())
                            .enumerate()
                            // Matches wholly inside the old tail were counted.
                            .filter(|(i, w)| *w == NEEDLE && i + NEEDLE.len() > keep_from)
                            .count();
                        counter.requests.fetch_add(found as u64, Ordering::Relaxed);
                        // Best effort: an Action split across reads is missed.
                        let chunk = &buf[..n];
                        let mut at = 0;
                        while let Some(p) = chunk[at..].windows(7).position(|w| w == b"Action=") {
                            let start = at + p + 7;
                            let end = chunk[start..]
                                .iter()
                                .position(|b| !b.is_ascii_alphanumeric())
                                .map_or(chunk.len(), |e| start + e);
                            let name = String::from_utf8_lossy(&chunk[start..end]).into_owned();
                            if let Ok(mut a) = counter.actions.lock() {
                                *a.entry(name).or_insert(0) += 1;
                            }
                            at = end;
                        }
                        let t = hay.len().saturating_sub(NEEDLE.len() - 1);
                        tail = hay[t..].to_vec();
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    Ok(format!("http://{addr}"))
}

// ---------------------------------------------------------------- setup

async fn namespace(client: &Client) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &Namespace {
            metadata: ObjectMeta {
                name: Some(NS.into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("aws".into()),
                    ..Default::default()
                },
                string_data: Some(
                    [
                        ("AWS_ACCESS_KEY_ID".to_owned(), "testing".to_owned()),
                        ("AWS_SECRET_ACCESS_KEY".to_owned(), "testing".to_owned()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
        )
        .await?;
    Ok(())
}

/// Creates ImageBuild `i` and writes the status an up-to-date build has.
async fn seed_build(client: Client, i: usize, endpoint: String) -> anyhow::Result<()> {
    let api: Api<ImageBuild> = Api::namespaced(client, NS);
    let ib: ImageBuild = serde_json::from_value(serde_json::json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": build_name(i), "namespace": NS},
        "spec": {
            "provider": {
                "type": "aws",
                "regions": [REGION],
                "endpoint": endpoint,
                "credentials": {"secretRef": {"name": "aws"}},
            },
            "template": {"inline": TEMPLATE},
            // A safety net: a wrong hash stops at Suspended, it starts nothing.
            "suspend": true,
        },
    }))?;
    let created = api.create(&PostParams::default(), &ib).await?;
    // What dereference::inputs resolves for an inline template without
    // variablesFrom or parent: the template text and nothing else.
    let inputs = identity::ResolvedInputs {
        template: created.spec.template.inline.clone().unwrap_or_default(),
        ..Default::default()
    };
    let hash = identity::spec_hash(&created.spec, &inputs);
    let uid = created.uid().unwrap_or_default();
    let key = identity::build_key(&uid, &hash, "");
    let now = jiff::Timestamp::now();
    let base = ImageBuildStatus {
        latest_image: Some(ImageRecord {
            version: status::version_stamp(now),
            build_id: identity::build_id(&key, 1),
            build_key: key,
            spec_hash: hash,
            template_revision: None,
            built_at: Time(now),
            parent_image: None,
            artifacts: vec![RegionArtifact {
                region: REGION.to_owned(),
                image_id: format!("ami-{i:017x}"),
            }],
        }),
        ..Default::default()
    };
    let st = status::up_to_date(&base, created.metadata.generation, now);
    let patch = serde_json::json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "ImageBuild",
        "status": st,
    });
    api.patch_status(
        &created.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Creates ImagePolicy `j` over builds 10j..10j+9 and writes the status of an
/// evaluation that found no images.
async fn seed_policy(client: Client, j: usize) -> anyhow::Result<()> {
    let api: Api<ImagePolicy> = Api::namespaced(client, NS);
    let mut names: Vec<String> = (10 * j..10 * j + 10).map(build_name).collect();
    names.sort();
    let policy: ImagePolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": policy_name(j), "namespace": NS},
        "spec": {"builds": {"names": names}, "keepLast": 3},
    }))?;
    let created = api.create(&PostParams::default(), &policy).await?;
    let eval = Evaluation {
        namespace: NS.to_owned(),
        selected: names,
        ..Default::default()
    };
    let st = evaluated(
        &Default::default(),
        &eval,
        created.metadata.generation,
        jiff::Timestamp::now(),
    );
    let patch = serde_json::json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "ImagePolicy",
        "status": st,
    });
    api.patch_status(
        &created.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn seed(client: &Client, from: usize, to: usize, endpoint: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let builds: Vec<anyhow::Result<()>> = stream::iter(from..to)
        .map(|i| seed_build(client.clone(), i, endpoint.to_owned()))
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    builds.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let policies: Vec<anyhow::Result<()>> = stream::iter(from / 10..to / 10)
        .map(|j| seed_policy(client.clone(), j))
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    policies.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!(
        "  seeded ImageBuilds {from}..{to} and ImagePolicies {}..{} in {:.1}s",
        from / 10,
        to / 10,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------- apiserver metrics

/// `apiserver_request_total` by its full label set.
type Requests = BTreeMap<BTreeMap<String, String>, f64>;

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_owned();
        let after = &rest[eq + 2..];
        let Some(end) = after.find('"') else { break };
        out.insert(key, after[..end].to_owned());
        rest = &after[end + 1..];
    }
    out
}

async fn apiserver_requests(client: &Client) -> anyhow::Result<Requests> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let mut out = Requests::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        out.insert(parse_labels(labels), value);
    }
    Ok(out)
}

fn delta(before: &Requests, after: &Requests) -> Requests {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d > 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

// ---------------------------------------------------------------- the controller

struct Sample {
    rss_mib: f64,
    hwm_mib: f64,
    sockets: usize,
}

fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |field: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let sockets = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0);
    Some(Sample {
        rss_mib: kib("VmRSS:") / 1024.0,
        hwm_mib: kib("VmHWM:") / 1024.0,
        sockets,
    })
}

async fn reconciles(http: &reqwest::Client, metrics: &str) -> Option<u64> {
    let text = http
        .get(format!("{metrics}/metrics"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("kiln_reconciles_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

fn kiln_binary() -> PathBuf {
    std::env::var_os("KILN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kiln")))
}

struct Measured {
    /// Seconds until the reconciles counter reached its target and stayed;
    /// None when the cap was hit first.
    convergence: Option<f64>,
    reconciles: u64,
    peak_rss_mib: f64,
    peak_sockets: usize,
    exit: String,
}

async fn run_controller(
    kubeconfig: &Path,
    workdir: &Path,
    log: &Path,
    target: u64,
) -> anyhow::Result<Measured> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let metrics = format!("http://127.0.0.1:{port}");
    let out = std::fs::File::create(log)?;
    let started = Instant::now();
    let mut child = Command::new(kiln_binary())
        .arg("controller")
        .arg("--default-executor")
        .arg("process")
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--workdir")
        .arg(workdir)
        .env("KUBECONFIG", kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or_default();
    let http = reqwest::Client::new();
    let mut peak_rss: f64 = 0.0;
    let mut peak_sockets = 0;
    let mut count = 0u64;
    let mut last_change = started;
    let mut convergence = None;
    let mut exit = String::from("running");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            exit = format!("exited early: {status}");
            break;
        }
        if let Some(s) = sample(pid) {
            peak_rss = peak_rss.max(s.rss_mib).max(s.hwm_mib);
            peak_sockets = peak_sockets.max(s.sockets);
        }
        if let Some(n) = reconciles(&http, &metrics).await
            && n != count
        {
            count = n;
            last_change = Instant::now();
        }
        if count >= target && last_change.elapsed() >= FLAT {
            convergence = Some(last_change.duration_since(started).as_secs_f64());
            break;
        }
        if started.elapsed() >= CAP {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(s) = sample(pid) {
        peak_rss = peak_rss.max(s.hwm_mib);
    }
    // Close the keep-alive connection to /metrics first: the metrics server's
    // graceful shutdown waits for open connections (see the report).
    drop(http);
    if exit == "running" {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        let stopping = Instant::now();
        exit = match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
            Ok(Ok(status)) => format!(
                "SIGTERM -> {status} after {:.1}s",
                stopping.elapsed().as_secs_f64()
            ),
            Ok(Err(e)) => format!("wait: {e}"),
            Err(_) => {
                let _ = child.kill().await;
                "did not exit 30s after SIGTERM; killed".to_owned()
            }
        };
    }
    Ok(Measured {
        convergence,
        reconciles: count,
        peak_rss_mib: peak_rss,
        peak_sockets,
        exit,
    })
}

// ---------------------------------------------------------------- report

struct Row {
    size: usize,
    policies: usize,
    m: Measured,
    by_verb_code: BTreeMap<(String, String), f64>,
    total: f64,
    throttled: f64,
    kiln_writes: BTreeMap<String, f64>,
    other_writes: BTreeMap<String, f64>,
    cloud: (u64, u64, u64),
    actions: BTreeMap<String, u64>,
}

const WRITE_VERBS: [&str; 5] = ["POST", "PUT", "PATCH", "APPLY", "DELETE"];

fn summarize(
    size: usize,
    m: Measured,
    d: &Requests,
    cloud: (u64, u64, u64),
    actions: BTreeMap<String, u64>,
) -> Row {
    let mut by_verb_code = BTreeMap::new();
    let mut kiln_writes = BTreeMap::new();
    let mut other_writes = BTreeMap::new();
    let (mut total, mut throttled) = (0.0, 0.0);
    for (labels, v) in d {
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let (verb, code, resource, sub) = (
            get("verb"),
            get("code"),
            get("resource"),
            get("subresource"),
        );
        // The bench's own scrape of /metrics.
        if resource.is_empty() {
            continue;
        }
        *by_verb_code
            .entry((verb.clone(), code.clone()))
            .or_insert(0.0) += v;
        total += v;
        if code == "429" {
            throttled += v;
        }
        if WRITE_VERBS.contains(&verb.as_str()) {
            let what = if sub.is_empty() {
                format!("{verb} {resource}")
            } else {
                format!("{verb} {resource}/{sub}")
            };
            if resource == "imagebuilds" || resource == "imagepolicies" {
                *kiln_writes.entry(what).or_insert(0.0) += v;
            } else {
                *other_writes.entry(what).or_insert(0.0) += v;
            }
        }
    }
    Row {
        size,
        policies: size / 10,
        m,
        by_verb_code,
        total,
        throttled,
        kiln_writes,
        other_writes,
        cloud,
        actions,
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn print_report(rows: &[Row]) {
    println!();
    println!(
        "{:>6} {:>6} {:>12} {:>10} {:>8} {:>9} {:>6} {:>7} {:>12} {:>12}",
        "builds",
        "pols",
        "converge s",
        "peak MiB",
        "sockets",
        "api reqs",
        "429s",
        "writes",
        "cloud reqs",
        "cloud conns"
    );
    for r in rows {
        let conv =
            r.m.convergence
                .map_or_else(|| format!(">{}", CAP.as_secs()), |s| format!("{s:.1}"));
        let writes = r.kiln_writes.values().sum::<f64>() + 0.0;
        println!(
            "{:>6} {:>6} {:>12} {:>10.1} {:>8} {:>9} {:>6} {:>7} {:>12} {:>12}",
            r.size,
            r.policies,
            conv,
            r.m.peak_rss_mib,
            r.m.peak_sockets,
            r.total,
            r.throttled,
            writes,
            r.cloud.1,
            r.cloud.0
        );
    }
    for r in rows {
        println!();
        println!(
            "size {} (target {} reconciles, counted {}; controller {}):",
            r.size,
            r.size + r.policies,
            r.m.reconciles,
            r.m.exit
        );
        let by: Vec<String> = r
            .by_verb_code
            .iter()
            .map(|((verb, code), v)| format!("{verb} {code}: {v}"))
            .collect();
        println!("  apiserver requests by verb/code: {}", by.join(", "));
        let kw: Vec<String> = r
            .kiln_writes
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!(
            "  writes to imagebuilds|imagepolicies: {}",
            if kw.is_empty() {
                "none".to_owned()
            } else {
                kw.join(", ")
            }
        );
        let ow: Vec<String> = r
            .other_writes
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!(
            "  other writes (events, leases, ...): {}",
            if ow.is_empty() {
                "none".to_owned()
            } else {
                ow.join(", ")
            }
        );
        println!(
            "  cloud (moto, via counting proxy): {} HTTP/1.1 request lines on {} connections, {} bytes sent",
            r.cloud.1, r.cloud.0, r.cloud.2
        );
        let acts: Vec<String> = r.actions.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!("  cloud calls by EC2 Action: {}", acts.join(", "));
        let writes = r.kiln_writes.values().sum::<f64>() + 0.0;
        println!(
            "  goal: convergence <= 30 s {} | peak RSS <= 128 MiB {} | 0 writes on cold start {} | no 429 storm {}",
            verdict(r.m.convergence.is_some_and(|s| s <= 30.0)),
            verdict(r.m.peak_rss_mib <= 128.0),
            verdict(writes == 0.0),
            verdict(r.throttled == 0.0),
        );
    }
    println!();
    println!(
        "convergence: from process start until kiln_reconciles_total reached builds+policies and stayed flat {}s (sampled every 100 ms). \
peak RSS: max of VmHWM/VmRSS. sockets: /proc/<pid>/fd entries 'socket:'. apiserver requests: apiserver_request_total delta \
over the controller's lifetime (scraped after it exited, so WATCHes are in), excluding non-resource URLs. cloud: requests counted \
as ' HTTP/1.1\\r\\n' request lines the controller sent to moto.",
        FLAT.as_secs()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kiln::install_crypto_provider();
    let sizes: Vec<usize> = std::env::var("BENCH_SCALE")
        .unwrap_or_else(|_| "1000,3000,10000".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "scale benchmark: sizes {sizes:?} (ImageBuilds; ImagePolicies = size/10, 10 builds each)"
    );

    let plane = ControlPlane::start(Options::default()).await?;
    let client = plane.admin_client().await?;
    kiln::crdgen::apply(&client, Duration::from_secs(30)).await?;
    let moto = Moto::start().await?;
    let counter = Arc::new(CloudCounter::default());
    let upstream = moto
        .endpoint()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let endpoint = proxy(upstream, counter.clone()).await?;
    namespace(&client).await?;
    let dir = tempfile::tempdir()?;

    let mut rows = Vec::new();
    let mut seeded = 0;
    for size in sizes {
        eprintln!("size {size}:");
        if size > seeded {
            seed(&client, seeded, size, &endpoint).await?;
            seeded = size;
        }
        let before_cloud = counter.snapshot();
        let before = apiserver_requests(&client).await?;
        let log = dir.path().join(format!("controller-{size}.log"));
        let target = (seeded + seeded / 10) as u64;
        let m = run_controller(
            &plane.admin_kubeconfig_path(),
            &dir.path().join("builds"),
            &log,
            target,
        )
        .await?;
        let after = apiserver_requests(&client).await?;
        let now_cloud = counter.snapshot();
        let cloud = (
            now_cloud.0 - before_cloud.0,
            now_cloud.1 - before_cloud.1,
            now_cloud.2 - before_cloud.2,
        );
        let actions: BTreeMap<String, u64> = now_cloud
            .3
            .iter()
            .map(|(k, v)| (k.clone(), v - before_cloud.3.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect();
        eprintln!(
            "  controller: {} reconciles, {} ({})",
            m.reconciles,
            m.convergence.map_or_else(
                || "not converged".to_owned(),
                |s| format!("converged in {s:.1}s")
            ),
            m.exit
        );
        // Keep the log of a run that wrote or did not converge.
        let row = summarize(seeded, m, &delta(&before, &after), cloud, actions);
        if row.m.convergence.is_none()
            || !row.kiln_writes.is_empty()
            || !row.m.exit.contains("exit status: 0")
        {
            let keep = std::env::temp_dir().join(format!("kiln-scale-controller-{size}.log"));
            let _ = std::fs::copy(&log, &keep);
            eprintln!("  controller log kept at {}", keep.display());
        }
        rows.push(row);
    }
    print_report(&rows);
    drop(moto);
    plane.stop().await;
    Ok(())
}
