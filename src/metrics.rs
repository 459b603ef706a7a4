//! Prometheus metrics of the controller.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Label for errors by kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error's kind: kube, provider, executor, ...
    pub kind: String,
}

/// Label for builds by executor.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// job or process.
    pub executor: String,
}

/// Every metric kiln exports.
pub struct Metrics {
    registry: Registry,
    /// Reconciles run.
    pub reconciles: Counter,
    /// Reconcile errors by kind.
    pub errors: Family<ErrorLabels, Counter>,
    /// Builds started.
    pub builds_started: Family<BuildLabels, Counter>,
    /// Builds that produced verified images.
    pub builds_succeeded: Family<BuildLabels, Counter>,
    /// Builds that failed (each attempt counts).
    pub builds_failed: Family<BuildLabels, Counter>,
    /// Seconds from start to finish of each build.
    pub build_duration: Histogram,
    /// 1 while this replica holds the leader lease (or runs without election).
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let builds_started = Family::<BuildLabels, Counter>::default();
        let builds_succeeded = Family::<BuildLabels, Counter>::default();
        let builds_failed = Family::<BuildLabels, Counter>::default();
        // Builds take from seconds (a local stand-in) to hours (OpenStack).
        let build_duration = Histogram::new([
            10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
        ]);
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconcile errors by kind",
            errors.clone(),
        );
        registry.register("builds_started", "Builds started", builds_started.clone());
        registry.register(
            "builds_succeeded",
            "Builds that produced verified images",
            builds_succeeded.clone(),
        );
        registry.register(
            "builds_failed",
            "Build attempts that failed",
            builds_failed.clone(),
        );
        registry.register(
            "build_duration_seconds",
            "Duration of finished builds",
            build_duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Metrics {
            leader,
            registry,
            reconciles,
            errors,
            builds_started,
            builds_succeeded,
            builds_failed,
            build_duration,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts an error of a kind.
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }
}
