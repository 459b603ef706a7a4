//! Leader election on a `coordination.k8s.io` Lease: of several replicas only
//! the holder reconciles; the others stand by, ready, until the lease expires.

use std::{future::Future, sync::Arc, time::Duration};

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Where the lease lives and how long a holder keeps it without renewing.
#[derive(Clone, Debug)]
pub struct Election {
    /// Namespace of the Lease (the controller's own).
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (the Pod name in a cluster).
    pub identity: String,
    /// A holder that stops renewing loses the lease after this long; a
    /// standby takes over within it.
    pub lease_duration: Duration,
    /// The holder renews this long before the lease would expire.
    pub renew_before: Duration,
}

/// How a term ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Shut down on request; the lease was released if held.
    Stopped,
    /// The lease was lost (not renewed in time, or taken over).
    LostLease,
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease could not be read, created or updated.
    #[error("lease {namespace}/{name}: {source}")]
    Lease {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// What failed.
        source: LeaseManagerError,
    },
    /// The task that renews the lease ended.
    #[error("lease {0}: the renewing task stopped")]
    WatcherGone(String),
}

/// Stands by until this replica holds the lease, then runs `lead` with a token
/// cancelled when `shutdown` is or the lease is lost, and releases the lease
/// once `lead` returns after a shutdown. `on_standby` runs once the Lease is
/// reachable (the replica is ready, though not leading).
pub async fn run<F, Fut>(
    client: Client,
    election: &Election,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    on_standby: impl FnOnce(),
    lead: F,
) -> Result<Ended, LeaderError>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let lease_error = |source| LeaderError::Lease {
        namespace: election.namespace.clone(),
        name: election.lease_name.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(client, &election.lease_name)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(election.lease_duration.as_secs().max(1))
        .with_grace(election.renew_before.as_secs())
        .with_field_manager(crate::crdgen::FIELD_MANAGER)
        .build()
        .await
        .map_err(lease_error)?;
    let (mut leading, watcher) = manager.watch().await;
    on_standby();
    tracing::info!(
        lease = %format!("{}/{}", election.namespace, election.lease_name),
        identity = %election.identity,
        "standing by for the leader lease"
    );

    // Stand by.
    while !*leading.borrow_and_update() {
        tokio::select! {
            () = shutdown.cancelled() => {
                drop(leading);
                let _ = watcher.await;
                return Ok(Ended::Stopped);
            }
            changed = leading.changed() => {
                if changed.is_err() {
                    return Err(LeaderError::WatcherGone(election.lease_name.clone()));
                }
            }
        }
    }

    metrics.leader.set(1);
    tracing::info!(identity = %election.identity, "acquired the leader lease; reconciling");
    let term = shutdown.child_token();
    let lost = {
        let term = term.clone();
        let mut leading = leading.clone();
        async move {
            tokio::select! {
                () = term.cancelled() => {}
                // An error means the renewing task is gone: the lease is lost.
                _ = leading.wait_for(|held| !held) => term.cancel(),
            }
        }
    };
    let lead = {
        let term = term.clone();
        async move {
            lead(term.clone()).await;
            term.cancel();
        }
    };
    futures::join!(lead, lost);
    metrics.leader.set(0);

    // Anything but a requested shutdown ended the term: the lease was lost or
    // the task renewing it is gone.
    let ended = if shutdown.is_cancelled() {
        Ended::Stopped
    } else {
        Ended::LostLease
    };
    // Dropping the receiver makes the renewing task release the lease.
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), watcher).await {
        Ok(Ok(Ok(_))) => tracing::info!("released the leader lease"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not release the leader lease"),
        Ok(Err(_)) | Err(_) => tracing::warn!("the lease task did not finish releasing"),
    }
    Ok(ended)
}

/// This replica's identity: the Pod name where there is one, else host and pid.
pub fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "kiln".into());
    format!("{host}-{}", std::process::id())
}

/// A token cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            () = term => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        cancel.cancel();
    });
    token
}
