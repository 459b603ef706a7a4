//! Starting the controller: metrics and probes, then both controllers,
//! under leader election when asked.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;

use super::{Config, leader};
use crate::{metrics::Metrics, server};

/// Runs the controller until SIGTERM/SIGINT, or until a lost lease.
pub async fn run(
    client: kube::Client,
    config: Config,
    metrics_addr: SocketAddr,
    election: Option<leader::Election>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let health = server::Health {
        ready: ready.clone(),
        metrics: metrics.clone(),
    };
    let shutdown = leader::shutdown_on_signal();
    let server = tokio::spawn(server::serve(
        metrics_addr,
        health,
        shutdown.clone().cancelled_owned(),
    ));
    let ended = match election {
        Some(election) => {
            let lead =
                |term| super::run(client.clone(), config, metrics.clone(), ready.clone(), term);
            leader::run(
                client.clone(),
                &election,
                metrics.clone(),
                shutdown.clone(),
                || ready.store(true, Ordering::Relaxed),
                lead,
            )
            .await?
        }
        None => {
            metrics.leader.set(1);
            super::run(client, config, metrics, ready, shutdown.clone()).await;
            leader::Ended::Stopped
        }
    };
    shutdown.cancel();
    server
        .await
        .context("metrics server")?
        .context("metrics server")?;
    if ended == leader::Ended::LostLease {
        // Exiting ends this replica's process builds with it, so a replica
        // that lost the lease never acts on stale state; it comes back as a
        // standby.
        anyhow::bail!("lost the leader lease; exiting so the replica restarts as a standby");
    }
    Ok(())
}
