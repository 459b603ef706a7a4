//! The process executor: `kiln runner` as a child of the controller, for
//! development and the local demo.
//!
//! Runs live only in this controller's memory, so a restarted controller
//! cannot see a build its predecessor started: such a build is reported as
//! lost, which the controller records as a failed attempt and retries.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
};

use tokio::{process::Command, sync::oneshot};

use super::{ExecutorError, Launch};
use crate::{
    image_build::run::RunState,
    packer::runner::{REQUEST_ENV, RunnerResult, SECRET_ENV},
};

enum Run {
    Running(Option<oneshot::Sender<String>>),
    Done(RunState),
}

/// Runs builds as child processes.
#[derive(Clone)]
pub struct ProcessExecutor {
    runner: PathBuf,
    workroot: PathBuf,
    env: Vec<(String, String)>,
    runs: Arc<Mutex<HashMap<String, Run>>>,
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

    /// Starts `kiln runner` for a build, unless it already runs here. Returns
    /// the process ID as the handle.
    pub fn start(&self, launch: &Launch, on_finish: OnFinish) -> Result<String, ExecutorError> {
        let build_id = launch.request.build_id.clone();
        if self.lock().contains_key(&build_id) {
            return Ok(format!("process:{build_id}"));
        }
        let workdir = self.workroot.join(&build_id);
        let _ = std::fs::remove_dir_all(&workdir);
        std::fs::create_dir_all(&workdir)
            .map_err(|e| ExecutorError::Io(format!("creating {}", workdir.display()), e))?;
        let result_file = workdir.join("result.json");
        let mut cmd = Command::new(&self.runner);
        cmd.arg("runner")
            .arg("--result-file")
            .arg(&result_file)
            .arg("--workdir")
            .arg(workdir.join("packer"))
            .env(REQUEST_ENV, serde_json::to_string(&launch.request)?)
            .env(SECRET_ENV, launch.secret_env_names())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        for e in &launch.secret_env {
            cmd.env(&e.name, &e.value);
        }
        crate::child::die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| ExecutorError::Io(format!("starting {}", self.runner.display()), e))?;
        let pid = child
            .id()
            .map_or_else(|| "exited".to_owned(), |p| p.to_string());
        let (kill_tx, kill_rx) = oneshot::channel();
        self.lock()
            .insert(build_id.clone(), Run::Running(Some(kill_tx)));

        let runs = self.runs.clone();
        let timeout = launch.timeout;
        tokio::spawn(async move {
            let outcome = tokio::select! {
                status = child.wait() => match status {
                    Ok(status) => read_result(&result_file, &format!("the runner exited with {status} without a result")).await,
                    Err(e) => RunState::Lost(format!("waiting for the runner: {e}")),
                },
                why = kill_rx => {
                    let _ = child.kill().await;
                    RunState::Lost(why.unwrap_or_else(|_| "the build was stopped".into()))
                }
                _ = tokio::time::sleep(timeout) => {
                    let _ = child.kill().await;
                    RunState::Lost(format!("the build exceeded its timeout of {}s and was stopped", timeout.as_secs()))
                }
            };
            runs.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(build_id.clone(), Run::Done(outcome));
            on_finish(&build_id);
        });
        Ok(format!("pid:{pid}"))
    }

    /// What became of a build.
    pub fn observe(&self, build_id: &str) -> RunState {
        match self.lock().get(build_id) {
            Some(Run::Running(_)) => RunState::Running,
            Some(Run::Done(state)) => state.clone(),
            None => RunState::Lost("the build process was orphaned by a controller restart".into()),
        }
    }

    /// Stops a running build; `why` becomes the recorded failure.
    pub fn stop(&self, build_id: &str, why: &str) {
        if let Some(Run::Running(kill)) = self.lock().get_mut(build_id)
            && let Some(kill) = kill.take()
        {
            let _ = kill.send(why.to_owned());
        }
    }

    /// Forgets a recorded build and removes its work directory.
    pub fn forget(&self, build_id: &str) {
        if matches!(self.lock().get(build_id), Some(Run::Done(_))) {
            self.lock().remove(build_id);
            let _ = std::fs::remove_dir_all(self.workroot.join(build_id));
        }
    }
}

async fn read_result(path: &std::path::Path, otherwise: &str) -> RunState {
    match tokio::fs::read(path).await {
        Ok(bytes) => match serde_json::from_slice::<RunnerResult>(&bytes) {
            Ok(result) => RunState::Finished(result),
            Err(e) => RunState::Lost(format!("the runner's result is unreadable: {e}")),
        },
        Err(_) => RunState::Lost(otherwise.to_owned()),
    }
}
