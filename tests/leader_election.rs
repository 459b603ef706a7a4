//! Two `kiln controller` processes on one Lease: only the holder reconciles,
//! a standby takes over when the holder dies, and shutting down releases it.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kiln::api::ImageBuild;
use kube::{Api, api::PostParams};
use serde_json::json;
use support::*;

const NS: &str = "images";
const LEASE_NS: &str = "kiln-system";
const LEASE: &str = "kiln-controller";
const LEASE_SECONDS: u64 = 6;
const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

async fn holder(leases: &Api<Lease>) -> Option<String> {
    let lease = leases.get_opt(LEASE).await.ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

async fn wait_holder(leases: &Api<Lease>, want: Option<&str>, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if holder(leases).await.as_deref() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "lease holder is {:?}, wanted {want:?} within {timeout:?}",
        holder(leases).await
    );
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    let env = Env::start(false).await;
    env.build_namespace(NS).await;
    env.namespace(LEASE_NS).await;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), LEASE_NS);
    let builds: Api<ImageBuild> = Api::namespaced(env.client.clone(), NS);
    let lease_seconds = LEASE_SECONDS.to_string();
    let args = [
        "--default-executor",
        "process",
        "--leader-elect",
        "--leader-election-namespace",
        LEASE_NS,
        "--lease-duration-seconds",
        &lease_seconds,
        "--lease-renew-before-seconds",
        "2",
    ];
    let kubeconfig = env.plane.admin_kubeconfig_path();

    // The first replica takes the lease; the second stands by, ready.
    let a = env
        .controller_with("a", &kubeconfig, &args, &[("POD_NAME", "kiln-a")])
        .await;
    wait_holder(&leases, Some("kiln-a"), Duration::from_secs(30)).await;
    let b = env
        .controller_with("b", &kubeconfig, &args, &[("POD_NAME", "kiln-b")])
        .await;

    builds
        .create(
            &PostParams::default(),
            &image_build(
                "first",
                env.moto.endpoint(),
                &["us-east-1"],
                json!({"flavor": "first"}),
            ),
        )
        .await
        .expect("create first");
    wait_for(&builds, "first", BUILD_TIMEOUT, &a.log, is_ready).await;

    // Only the leader acted.
    assert_eq!(a.metric("kiln_leader").await, 1.0);
    assert_eq!(b.metric("kiln_leader").await, 0.0);
    assert!(a.metric("kiln_reconciles_total").await > 0.0);
    assert_eq!(
        b.metric("kiln_reconciles_total").await,
        0.0,
        "the standby reconciled:\n{}",
        b.log_text()
    );
    assert_eq!(holder(&leases).await.as_deref(), Some("kiln-a"));

    // The leader dies without releasing: the standby takes over once the
    // lease expires.
    let renewed = leases
        .get(LEASE)
        .await
        .expect("lease")
        .spec
        .and_then(|s| s.renew_time)
        .expect("renewTime");
    a.signal(libc::SIGKILL);
    wait_holder(
        &leases,
        Some("kiln-b"),
        Duration::from_secs(LEASE_SECONDS * 3),
    )
    .await;
    let after_renewal = jiff::Timestamp::now().duration_since(renewed.0);
    println!(
        "failover: kiln-b holds the lease {:.1}s after kiln-a's last renewal (lease duration {LEASE_SECONDS}s)",
        after_renewal.as_secs_f64()
    );

    // The new leader reconciles.
    builds
        .create(
            &PostParams::default(),
            &image_build(
                "second",
                env.moto.endpoint(),
                &["us-east-1"],
                json!({"flavor": "second"}),
            ),
        )
        .await
        .expect("create second");
    wait_for(&builds, "second", BUILD_TIMEOUT, &b.log, is_ready).await;
    assert_eq!(b.metric("kiln_leader").await, 1.0);
    assert!(b.metric("kiln_reconciles_total").await > 0.0);

    // A graceful shutdown releases the lease at once.
    let log = b.log.clone();
    let status = b.stop().await;
    assert!(status.success(), "kiln-b exited with {status}");
    // stop() waited for the exit, and the lease is released before it.
    assert_eq!(
        holder(&leases).await,
        None,
        "kiln-b released the lease on shutdown"
    );
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert!(log.contains("released the leader lease"), "{log}");
}
