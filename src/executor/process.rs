//! The process executor: `kiln runner` as a child of the controller, for
//! development and the local demo.
//!
//! Each build works in `<workroot>/<build ID>/`, where the runner leaves its
//! pid (`runner.pid`) and, when it ends, its report (`result.json`). So a
//! restarted controller finds what its predecessor started: a report is
//! adopted as if this controller had seen the build end, a runner still
//! cleaning up is waited for, and a runner gone without a report was
//! interrupted (not failed) and starts again.
//!
//! A runner is never killed outright while it can still clean up: stopping
//! one (a timeout, the controller shutting down) sends SIGTERM, which the
//! runner forwards to Packer, and waits up to the grace period.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    process::{Child, Command},
    sync::{RwLock, oneshot},
};

use super::{ExecutorError, Launch};
use crate::{
    image_build::run::RunState,
    packer::runner::{
        Created, GRACE_ENV, Outcome, PACKER_OUT, REQUEST_ENV, RunnerResult, SECRET_ENV,
    },
};

const RESULT_FILE: &str = "result.json";
const PID_FILE: &str = "runner.pid";

enum Run {
    Running(Option<oneshot::Sender<String>>),
    Done(Box<RunState>),
}

/// Runs builds as child processes.
#[derive(Clone)]
pub struct ProcessExecutor {
    runner: PathBuf,
    workroot: PathBuf,
    env: Vec<(String, String)>,
    runs: Arc<Mutex<HashMap<String, Run>>>,
    /// Every run task holds a read guard; shutdown takes the write lock, so
    /// it returns once every runner has ended.
    tasks: Arc<RwLock<()>>,
    shutdown: tokio_util::sync::CancellationToken,
}

/// Called with the build ID when a run finishes, to trigger a reconcile.
pub type OnFinish = Arc<dyn Fn(&str) + Send + Sync>;

impl ProcessExecutor {
    /// `runner` is the kiln binary; work directories go under `workroot`.
    pub fn new(runner: PathBuf, workroot: PathBuf) -> Self {
        ProcessExecutor {
            runner,
            workroot,
            env: Vec::new(),
            runs: Arc::default(),
            tasks: Arc::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Extra environment for every runner (log settings, for instance).
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = env;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Run>> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn workdir(&self, build_id: &str) -> PathBuf {
        self.workroot.join(build_id)
    }

    /// Starts `kiln runner` for a build, unless it already runs here. Returns
    /// the process ID as the handle.
    pub fn start(&self, launch: &Launch, on_finish: OnFinish) -> Result<String, ExecutorError> {
        let build_id = launch.request.build_id.clone();
        if self.lock().contains_key(&build_id) {
            return Ok(format!("process:{build_id}"));
        }
        let workdir = self.workdir(&build_id);
        // A runner a previous controller started for this very build (it
        // died before recording it) is adopted, not started twice.
        if let Some(pid) = live_runner(&workdir) {
            return Ok(format!("pid:{pid}"));
        }
        let _ = std::fs::remove_dir_all(&workdir);
        std::fs::create_dir_all(&workdir)
            .map_err(|e| ExecutorError::Io(format!("creating {}", workdir.display()), e))?;
        let result_file = workdir.join(RESULT_FILE);
        let mut cmd = Command::new(&self.runner);
        cmd.arg("runner")
            .arg("--result-file")
            .arg(&result_file)
            .arg("--workdir")
            .arg(workdir.join("packer"))
            .env(REQUEST_ENV, serde_json::to_string(&launch.request)?)
            .env(SECRET_ENV, launch.secret_env_names())
            .env(GRACE_ENV, launch.grace.as_secs().to_string())
            .stdin(Stdio::null());
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        for e in &launch.secret_env {
            cmd.env(&e.name, &e.value);
        }
        // If the controller dies, the runner gets SIGTERM and cleans up.
        crate::child::die_with_parent(&mut cmd);
        let Ok(guard) = self.tasks.clone().try_read_owned() else {
            return Err(ExecutorError::ShuttingDown);
        };
        let mut child = cmd
            .spawn()
            .map_err(|e| ExecutorError::Io(format!("starting {}", self.runner.display()), e))?;
        let pid = child
            .id()
            .map_or_else(|| "exited".to_owned(), |p| p.to_string());
        std::fs::write(workdir.join(PID_FILE), &pid)
            .map_err(|e| ExecutorError::Io(format!("writing {PID_FILE}"), e))?;
        let (kill_tx, kill_rx) = oneshot::channel();
        self.lock()
            .insert(build_id.clone(), Run::Running(Some(kill_tx)));

        let runs = self.runs.clone();
        let run_dir = workdir.clone();
        let (timeout, grace) = (launch.timeout, launch.grace);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let outcome = tokio::select! {
                status = child.wait() => match status {
                    Ok(status) => read_result(&result_file).unwrap_or_else(|| {
                        RunState::Lost(format!("the runner exited with {status} without a result"))
                    }),
                    Err(e) => RunState::Lost(format!("waiting for the runner: {e}")),
                },
                why = kill_rx => {
                    terminate(&mut child, grace).await;
                    stopped(&run_dir, &build_id, why.unwrap_or_else(|_| "the build was stopped".into()))
                }
                () = tokio::time::sleep(timeout) => {
                    terminate(&mut child, grace).await;
                    stopped(&run_dir, &build_id, format!("the build exceeded its timeout of {}s and was stopped", timeout.as_secs()))
                }
                () = shutdown.cancelled() => {
                    // The runner writes an interrupted result, which the next
                    // controller adopts; nothing is recorded here.
                    terminate(&mut child, grace).await;
                    return;
                }
            };
            runs.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(build_id.clone(), Run::Done(Box::new(outcome)));
            on_finish(&build_id);
        });
        Ok(format!("pid:{pid}"))
    }

    /// What became of a build; one this controller did not start is looked
    /// for in its work directory.
    pub fn observe(&self, build_id: &str) -> RunState {
        match self.lock().get(build_id) {
            Some(Run::Running(_)) => RunState::Running,
            Some(Run::Done(state)) => (**state).clone(),
            None => adopt(&self.workdir(build_id), build_id),
        }
    }

    /// Stops a running build; `why` becomes the recorded failure.
    pub fn stop(&self, build_id: &str, why: &str) {
        match self.lock().get_mut(build_id) {
            Some(Run::Running(kill)) => {
                if let Some(kill) = kill.take() {
                    let _ = kill.send(why.to_owned());
                }
            }
            Some(Run::Done(_)) => {}
            // A runner a previous controller started: SIGTERM it by pid.
            None => {
                if let Some(pid) = live_runner(&self.workdir(build_id)) {
                    send(pid, libc::SIGTERM);
                }
            }
        }
    }

    /// Forgets a recorded build and removes its work directory (unless its
    /// runner still runs).
    pub fn forget(&self, build_id: &str) {
        let mut runs = self.lock();
        if matches!(runs.get(build_id), Some(Run::Running(_))) {
            return;
        }
        runs.remove(build_id);
        drop(runs);
        let dir = self.workdir(build_id);
        if live_runner(&dir).is_none() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Stops every runner (SIGTERM, then the grace period) and returns once
    /// all have ended; starts no more. Each runner leaves an interrupted
    /// result for the next controller.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let _ = self.tasks.write().await;
    }
}

/// SIGTERM, then up to `grace` for the runner (and Packer's cleanup), then
/// SIGKILL.
async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        send(pid, libc::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::error!(
            "the runner did not stop within {}s; killing it",
            grace.as_secs()
        );
        let _ = child.kill().await;
    }
}

fn send(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a runner's pid, checked to be that runner.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The report a runner left in `dir`, if any.
fn read_result(path: &Path) -> Option<RunState> {
    let bytes = std::fs::read(path).ok()?;
    Some(match serde_json::from_slice::<RunnerResult>(&bytes) {
        Ok(result) => RunState::Finished(result),
        Err(e) => RunState::Lost(format!("the runner's result is unreadable: {e}")),
    })
}

/// The pid of the runner working in `dir`, if it is still alive: its pid
/// file names a process whose command line mentions `dir`.
fn live_runner(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = dir.as_os_str().as_encoded_bytes();
    cmdline
        .windows(needle.len())
        .any(|w| w == needle)
        .then_some(pid)
}

/// A build a previous controller started.
fn adopt(dir: &Path, build_id: &str) -> RunState {
    if live_runner(dir).is_some() {
        // Still building or cleaning up (its result may be half-written):
        // look again later.
        return RunState::Running;
    }
    read_result(&dir.join(RESULT_FILE)).unwrap_or_else(|| {
        ended_without_result(
            dir,
            build_id,
            Outcome::Interrupted,
            "the runner was gone after a controller restart".into(),
        )
    })
}

/// A run kiln stopped (timeout, deletion): a failed attempt, unless the
/// runner reported images, which are built and must be recorded. Either way
/// what Packer announced goes with it, for the sweep.
fn stopped(dir: &Path, build_id: &str, why: String) -> RunState {
    match read_result(&dir.join(RESULT_FILE)) {
        Some(RunState::Finished(result)) if result.outcome == Outcome::Succeeded => {
            RunState::Finished(result)
        }
        Some(RunState::Finished(result)) => RunState::Finished(RunnerResult {
            outcome: Outcome::Failed,
            message: Some(why),
            artifacts: vec![],
            ..result
        }),
        _ => ended_without_result(dir, build_id, Outcome::Failed, why),
    }
}

/// A runner that left no result (killed outright): what Packer announced is
/// read from its output file, begun when `packer build` started.
fn ended_without_result(dir: &Path, build_id: &str, outcome: Outcome, why: String) -> RunState {
    let out = dir.join("packer").join(PACKER_OUT);
    let mut created = Created {
        since: std::fs::metadata(&out)
            .and_then(|m| m.created())
            .ok()
            .and_then(|t| jiff::Timestamp::try_from(t).ok()),
        ..Default::default()
    };
    crate::packer::created::collect(
        &std::fs::read_to_string(&out).unwrap_or_default(),
        &mut created,
    );
    match (created.is_empty(), outcome) {
        (true, Outcome::Interrupted) => RunState::Interrupted(why),
        (true, _) => RunState::Lost(why),
        (false, outcome) => RunState::Finished(RunnerResult {
            build_id: build_id.to_owned(),
            outcome,
            artifacts: vec![],
            message: Some(why),
            packer_version: None,
            created,
        }),
    }
}
