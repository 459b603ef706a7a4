//! Fast reconcile scenarios against a mocked apiserver, the way kube-rs's
//! controller-rs example tests its reconciler: a `tower-test` mock service
//! behind a real `kube::Client`, and a script that answers each request the
//! reconcile is expected to make, in order, checking its method, path and
//! (where it matters) body. A request off the script fails the test; a
//! missing one times out. Each scenario takes milliseconds.
//!
//! These check one reconcile's requests and decisions only. The real
//! end-to-end tests, against a real control plane, are the other files in
//! this directory (`build_failures.rs`, `retention.rs`, ...).

use std::{path::PathBuf, sync::Arc, time::Duration};

use futures::FutureExt as _;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kiln::{
    api::{ExecutorType, ImageBuild, ImagePolicy, ImagePolicyStatus},
    controller::{Config, Context, reconcile, reconcile_policy},
    executor::{job::JobExecutor, process::ProcessExecutor},
    metrics::Metrics,
    reasons,
};
use kube::{
    Client,
    client::Body,
    runtime::{
        controller::Action,
        events::{Recorder, Reporter},
    },
};
use serde_json::{Value, json};

/// Longest a scenario may take before it counts as hung: an unexpected
/// request (never answered) or an expected one never made.
const LIMIT: Duration = Duration::from_secs(5);
const NS: &str = "builds";

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Responder = Box<dyn FnOnce(&Value) -> (StatusCode, Value) + Send>;

/// One request the reconcile must make next, and the answer it gets.
struct Exchange {
    method: Method,
    path: String,
    /// Query parameters that must be present (others may be).
    query: Vec<(&'static str, &'static str)>,
    reply: Responder,
}

impl Exchange {
    /// Answered 200 with the request body echoed back.
    fn new(method: Method, path: impl Into<String>) -> Self {
        Exchange {
            method,
            path: path.into(),
            query: Vec::new(),
            reply: Box::new(|body| (StatusCode::OK, body.clone())),
        }
    }

    fn query(mut self, key: &'static str, value: &'static str) -> Self {
        self.query.push((key, value));
        self
    }

    /// Answered with a fixed status and body.
    fn answer(self, status: StatusCode, body: Value) -> Self {
        self.reply(move |_| (status, body))
    }

    /// Answered from the request body.
    fn reply(mut self, f: impl FnOnce(&Value) -> (StatusCode, Value) + Send + 'static) -> Self {
        self.reply = Box::new(f);
        self
    }
}

/// A request the reconcile made.
#[derive(Debug)]
struct Sent {
    method: Method,
    path: String,
    content_type: Option<String>,
    /// The JSON body, `Null` when there was none.
    body: Value,
}

/// Answers the script in order; panics on a request that is not next.
async fn serve(handle: &mut Handle, script: Vec<Exchange>, sent: &mut Vec<Sent>) {
    for (i, exchange) in script.into_iter().enumerate() {
        let (request, respond) = handle
            .next_request()
            .await
            .expect("the client is alive while the reconcile runs");
        let (parts, body) = request.into_parts();
        let uri = parts.uri.to_string();
        assert_eq!(
            (&parts.method, parts.uri.path()),
            (&exchange.method, exchange.path.as_str()),
            "request {i} was {} {uri}",
            parts.method,
        );
        let query: Vec<(&str, &str)> = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        for pair in &exchange.query {
            assert!(query.contains(pair), "request {i} {uri} lacks {pair:?}");
        }
        let bytes = body.collect_bytes().await.expect("request body");
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON request body")
        };
        let (status, answer) = (exchange.reply)(&body);
        sent.push(Sent {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body,
        });
        let response = Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                serde_json::to_vec(&answer).expect("answer serializes"),
            ))
            .expect("a valid response");
        respond.send_response(response);
    }
}

fn context(client: Client) -> Arc<Context> {
    context_with(client, empty_build_cache())
}

fn context_with(
    client: Client,
    builds: kube::runtime::reflector::Store<ImageBuild>,
) -> Arc<Context> {
    // Nothing here starts a process or a Job: every scenario decides before that.
    let (finished, _) = tokio::sync::mpsc::unbounded_channel();
    let config = Config {
        default_executor: ExecutorType::Job,
        runner_image: "kiln:mock".into(),
        runner_path: PathBuf::from("/nonexistent/kiln"),
        workroot: std::env::temp_dir().join("kiln-reconcile-mock"),
        namespace: None,
        resync: Duration::from_secs(3600),
        runner_env: Vec::new(),
        build_grace: Duration::from_secs(5),
        max_concurrent_reconciles: 4,
        prune_concurrency: None,
    };
    Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "kiln".into(),
                instance: Some("kiln-mock".into()),
            },
        ),
        metrics: Arc::new(Metrics::default()),
        process: ProcessExecutor::new(config.runner_path.clone(), config.workroot.clone()),
        jobs: JobExecutor::new(client.clone(), config.runner_image.clone()),
        reader: kiln::dereference::Reader::cached(client.clone()),
        client,
        finished,
        builds,
        builds_ready: Default::default(),
        config,
    })
}

/// The controller's ImageBuild cache after its first listing found none.
fn empty_build_cache() -> kube::runtime::reflector::Store<kiln::api::ImageBuild> {
    use kube::runtime::watcher::Event;
    let (store, mut writer) = kube::runtime::reflector::store();
    writer.apply_watcher_event(&Event::Init);
    writer.apply_watcher_event(&Event::InitDone);
    store
}

/// Runs `reconcile` against a mocked apiserver that expects exactly `script`;
/// returns its result and what it sent.
async fn run<T, F>(
    script: Vec<Exchange>,
    reconcile: impl FnOnce(Arc<Context>) -> F,
) -> (T, Vec<Sent>)
where
    F: Future<Output = T>,
{
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "default"));
    let expected = script.len();
    let mut sent = Vec::new();
    let outcome = tokio::time::timeout(LIMIT, async {
        tokio::join!(reconcile(ctx), serve(&mut handle, script, &mut sent)).0
    })
    .await;
    // The handle stays alive to here, so a request off the script was never
    // answered (and the reconcile hung) rather than failed and been ignored.
    let pending = handle
        .next_request()
        .now_or_never()
        .flatten()
        .map(|(r, _)| format!("{} {}", r.method(), r.uri()));
    let Ok(result) = outcome else {
        let done: Vec<String> = sent
            .iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect();
        panic!(
            "the reconcile did not finish within {LIMIT:?}; answered {}/{expected} expected requests {done:?}; unexpected request: {pending:?}",
            sent.len()
        );
    };
    assert_eq!(pending, None, "a request off the script");
    assert_eq!(sent.len(), expected, "requests made");
    (result, sent)
}

fn build_status_path(name: &str) -> String {
    format!("/apis/kiln.dev/v1alpha1/namespaces/{NS}/imagebuilds/{name}/status")
}

fn policy_status_path(name: &str) -> String {
    format!("/apis/kiln.dev/v1alpha1/namespaces/{NS}/imagepolicies/{name}/status")
}

fn events_path() -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{NS}/events")
}

/// The status write: a forced server-side apply by kiln, conditional on the
/// resourceVersion; answered with `object` carrying the applied status.
fn status_apply(path: String, object: Value) -> Exchange {
    Exchange::new(Method::PATCH, path)
        .query("fieldManager", "kiln")
        .query("force", "true")
        .reply(move |body| {
            let mut stored = object;
            stored["status"] = body["status"].clone();
            stored["metadata"]["resourceVersion"] = json!("2");
            (StatusCode::OK, stored)
        })
}

fn status_failure(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn metadata(name: &str) -> Value {
    json!({
        "name": name,
        "namespace": NS,
        "uid": "6f1c2f4e-0b8e-4f43-9d1a-3c5a7e2b9d10",
        "resourceVersion": "1",
        "generation": 3,
    })
}

/// A GCP ImageBuild with an inline template and ambient credentials: its
/// inputs need no Secret, and suspended, it asks the cloud nothing.
fn gcp_build(name: &str, suspend: bool) -> ImageBuild {
    serde_json::from_value(json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": metadata(name),
        "spec": {
            "provider": {
                "type": "gcp",
                "regions": ["us-central1-a"],
                "gcp": {"projectId": "kiln-mock"},
            },
            "template": {"inline": "source \"null\" \"x\" {}\nbuild { sources = [\"source.null.x\"] }\n"},
            "suspend": suspend,
        },
    }))
    .expect("a valid ImageBuild")
}

/// An AWS ImageBuild whose credentials are in Secret `creds`.
fn aws_build(name: &str) -> ImageBuild {
    serde_json::from_value(json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": metadata(name),
        "spec": {
            "provider": {
                "type": "aws",
                "regions": ["us-east-1"],
                "credentials": {"secretRef": {"name": "creds"}},
            },
            "template": {"inline": "source \"null\" \"x\" {}\nbuild { sources = [\"source.null.x\"] }\n"},
        },
    }))
    .expect("a valid ImageBuild")
}

/// An ImagePolicy that names one ImageBuild, `ghost`.
fn policy(name: &str) -> ImagePolicy {
    serde_json::from_value(json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": metadata(name),
        "spec": {"builds": {"names": ["ghost"]}, "keepLast": 2},
    }))
    .expect("a valid ImagePolicy")
}

fn to_json<T: serde::Serialize>(obj: &T) -> Value {
    serde_json::to_value(obj).expect("serializes")
}

/// The condition of this type in a status body.
fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

/// Asserts `sent` is kiln's status apply of `obj`, and returns the status.
fn applied_status<'a>(sent: &'a Sent, obj: &Value) -> &'a Value {
    assert_eq!(
        sent.content_type.as_deref(),
        Some("application/apply-patch+yaml"),
        "a server-side apply"
    );
    assert_eq!(sent.body["apiVersion"], obj["apiVersion"]);
    assert_eq!(sent.body["kind"], obj["kind"]);
    assert_eq!(
        sent.body["metadata"]["resourceVersion"], obj["metadata"]["resourceVersion"],
        "the write is conditional on the version the reconcile read"
    );
    assert_eq!(
        sent.body.get("spec"),
        None,
        "a status write carries no spec"
    );
    &sent.body["status"]
}

#[tokio::test]
async fn suspended_build_writes_suspended_status_only() {
    let ib = gcp_build("paused", true);
    let obj = to_json(&ib);
    let (result, sent) = run(
        vec![status_apply(build_status_path("paused"), obj.clone())],
        |ctx| reconcile(Arc::new(ib), ctx),
    )
    .await;
    assert_eq!(result.expect("reconcile"), Action::await_change());
    let status = applied_status(&sent[0], &obj);
    assert_eq!(status["phase"], "Suspended");
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status.get("currentBuild"), None, "nothing started");
}

#[tokio::test]
async fn suspended_build_already_recorded_makes_no_request() {
    let mut ib = gcp_build("paused", true);
    ib.status = Some(
        serde_json::from_value(json!({"phase": "Suspended", "observedGeneration": 3}))
            .expect("a valid status"),
    );
    let (result, sent) = run(vec![], |ctx| reconcile(Arc::new(ib), ctx)).await;
    assert_eq!(result.expect("reconcile"), Action::await_change());
    assert!(sent.is_empty());
}

/// The requests of an AWS build whose credentials Secret is missing: the
/// read, the Event, the status write.
async fn missing_credentials(ib: ImageBuild) -> (Action, Vec<Sent>) {
    let obj = to_json(&ib);
    let (result, sent) = run(
        vec![
            Exchange::new(
                Method::GET,
                format!("/api/v1/namespaces/{NS}/secrets/creds"),
            )
            .answer(
                StatusCode::NOT_FOUND,
                status_failure(404, "NotFound", "secrets \"creds\" not found"),
            ),
            Exchange::new(Method::POST, events_path())
                .reply(|body| (StatusCode::CREATED, body.clone())),
            status_apply(build_status_path("lacking"), obj),
        ],
        |ctx| reconcile(Arc::new(ib), ctx),
    )
    .await;
    (
        result.expect("a missing Secret is a condition, not an error"),
        sent,
    )
}

#[tokio::test]
async fn missing_credentials_publish_an_event_and_wait() {
    let ib = aws_build("lacking");
    let obj = to_json(&ib);
    let (action, sent) = missing_credentials(ib).await;
    assert_eq!(
        action,
        Action::requeue(kiln::image_build::decide::POLL_DEPENDENCY),
        "looks for the Secret again"
    );
    assert_ne!(action, Action::await_change());

    let event = &sent[1].body;
    assert_eq!(event["reason"], reasons::CREDENTIALS_NOT_FOUND);
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reportingController"], "kiln");
    assert_eq!(event["regarding"]["kind"], "ImageBuild");
    assert_eq!(event["regarding"]["name"], "lacking");
    assert_eq!(event["regarding"]["namespace"], NS);
    let note = event["note"].as_str().unwrap_or_default();
    assert!(note.contains(&format!("Secret {NS}/creds")), "note: {note}");

    let status = applied_status(&sent[2], &obj);
    assert_eq!(status["phase"], "Pending");
    let ready = condition(status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::CREDENTIALS_NOT_FOUND);
    assert_eq!(ready["observedGeneration"], 3);
    let reconciling = condition(status, "Reconciling");
    assert_eq!(reconciling["status"], "True");
    assert_eq!(reconciling["reason"], reasons::CREDENTIALS_NOT_FOUND);
    assert_eq!(condition(status, "Stalled"), &Value::Null);
}

#[tokio::test]
async fn still_missing_credentials_neither_publish_nor_write() {
    let ib = aws_build("lacking");
    let (_, sent) = missing_credentials(ib.clone()).await;
    let mut again = ib;
    again.status = Some(serde_json::from_value(sent[2].body["status"].clone()).expect("a status"));

    let (result, sent) = run(
        vec![
            Exchange::new(
                Method::GET,
                format!("/api/v1/namespaces/{NS}/secrets/creds"),
            )
            .answer(
                StatusCode::NOT_FOUND,
                status_failure(404, "NotFound", "secrets \"creds\" not found"),
            ),
        ],
        |ctx| reconcile(Arc::new(again), ctx),
    )
    .await;
    assert_eq!(
        result.expect("reconcile"),
        Action::requeue(kiln::image_build::decide::POLL_DEPENDENCY)
    );
    assert_eq!(sent.len(), 1, "only the Secret read");
}

#[tokio::test]
async fn conflicting_status_write_is_a_conflict_error() {
    let ib = gcp_build("raced", true);
    let (result, sent) = run(
        vec![
            Exchange::new(Method::PATCH, build_status_path("raced"))
                .query("fieldManager", "kiln")
                .query("force", "true")
                .answer(
                    StatusCode::CONFLICT,
                    status_failure(
                        409,
                        "Conflict",
                        "Operation cannot be fulfilled on imagebuilds.kiln.dev \"raced\": the object has been modified; please apply your changes to the latest version and try again",
                    ),
                ),
        ],
        |ctx| reconcile(Arc::new(ib), ctx),
    )
    .await;
    assert_eq!(sent[0].body["status"]["phase"], "Suspended");
    let error = result.expect_err("a refused write fails the reconcile");
    assert!(error.is_conflict(), "{error:?}");
    assert_eq!(error.kind(), "kube");
}

/// The requests of `policy("keep")` evaluated against a namespace without
/// ImageBuilds (read from the controller's cache, no LIST): the status write.
async fn no_builds(p: ImagePolicy) -> (Action, Vec<Sent>) {
    let obj = to_json(&p);
    let (result, sent) = run(vec![status_apply(policy_status_path("keep"), obj)], |ctx| {
        reconcile_policy(Arc::new(p), ctx)
    })
    .await;
    (
        result.expect("a policy selecting nothing is stalled, not an error"),
        sent,
    )
}

#[tokio::test]
async fn policy_naming_a_missing_build_stalls() {
    let p = policy("keep");
    let obj = to_json(&p);
    let (action, sent) = no_builds(p).await;
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(3600)),
        "the interval"
    );
    let status = applied_status(&sent[0], &obj);
    assert_eq!(status["observedGeneration"], 3);
    let ready = condition(status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::NO_BUILDS_SELECTED);
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(message.contains("not found: ghost"), "message: {message}");
    assert!(message.contains(NS), "message: {message}");
    let stalled = condition(status, "Stalled");
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], reasons::NO_BUILDS_SELECTED);
    assert_eq!(condition(status, "Reconciling"), &Value::Null);
    assert!(status["lastEvaluatedAt"].is_string());
}

#[tokio::test]
async fn idle_policy_makes_no_request() {
    // The stored status is what the first evaluation wrote, but older.
    let p = policy("keep");
    let (_, sent) = no_builds(p.clone()).await;
    let stored: ImagePolicyStatus =
        serde_json::from_value(sent[0].body["status"].clone()).expect("a policy status");
    assert!(stored.last_evaluated_at.is_some());
    let mut idle = p;
    idle.status = Some(ImagePolicyStatus {
        // An hour ago: the time of the last evaluation is not a change.
        last_evaluated_at: Some(Time("2026-01-01T00:00:00Z".parse().expect("a timestamp"))),
        ..stored
    });
    idle.metadata.resource_version = Some("2".into());

    let (result, sent) = run(vec![], |ctx| reconcile_policy(Arc::new(idle), ctx)).await;
    assert_eq!(
        result.expect("reconcile"),
        Action::requeue(Duration::from_secs(3600))
    );
    let writes = sent.iter().filter(|s| s.method != Method::GET).count();
    assert_eq!(
        writes, 0,
        "nothing changed, so nothing is written: {sent:?}"
    );
}

/// Policies evaluated before the ImageBuild cache is listed all go on once it
/// is: kube's own readiness woke only the last of several waiters, and the
/// others held their reconcile slots for good.
#[tokio::test]
async fn every_reconcile_waiting_for_the_build_cache_goes_on_once_it_is_listed() {
    use kube::runtime::{reflector, watcher::Event};
    let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (store, mut writer) = reflector::store::<ImageBuild>();
    let ctx = context_with(Client::new(service, "default"), store);
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let ctx = ctx.clone();
            tokio::spawn(async move { ctx.builds_listed().await })
        })
        .collect();
    // Let every waiter poll (and park) before the listing completes.
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    writer.apply_watcher_event(&Event::Init);
    writer.apply_watcher_event(&Event::InitDone);
    for waiter in waiters {
        tokio::time::timeout(LIMIT, waiter)
            .await
            .expect("a reconcile waiting for the cache was never woken")
            .expect("join")
            .expect("listed");
    }
}
