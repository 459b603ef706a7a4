//! The clouds without an emulator of their own, as `hack/` starts them:
//! OpenStack (real Keystone and Glance, a minimal Nova) and DigitalOcean (a
//! stateful stand-in behind Prism's validating proxy). Each `run.py` prints
//! one JSON line once everything answers and stops its children on SIGTERM.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::{Error, die_with_parent, io};

/// A service started by one of `hack/`'s `run.py` scripts.
pub struct Service {
    child: Child,
    /// What `run.py` printed once ready (URLs, credentials, regions).
    pub info: serde_json::Value,
    _dir: tempfile::TempDir,
}

/// `hack/` in this repository.
/// Found at run time first: cargo sets `CARGO_MANIFEST_DIR` for the tests
/// it runs (the repository root for kiln's), while the path compiled in
/// may be another checkout's that shares the build cache.
fn hack() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(|d| PathBuf::from(d).join("hack"))
        .filter(|h| h.join("openstack/run.py").is_file())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hack"))
}

impl Service {
    /// Real Keystone and Glance (one per region: `RegionOne`, `RegionTwo`)
    /// with kiln's one stand-in, a minimal Nova (`hack/openstack`).
    pub async fn openstack() -> Result<Service, Error> {
        Service::start("openstack", |dir| {
            vec![dir.join("stack").display().to_string()]
        })
        .await
    }

    /// The DigitalOcean API stand-in, every request and response validated
    /// against DigitalOcean's OpenAPI spec (`hack/digitalocean`).
    pub async fn digitalocean() -> Result<Service, Error> {
        Service::start("digitalocean", |dir| {
            vec!["--log-dir".into(), dir.display().to_string()]
        })
        .await
    }

    /// The Compute Engine v1 stand-in, every request and response validated
    /// against Google's Discovery document (`hack/gce`).
    pub async fn gce() -> Result<Service, Error> {
        Service::start("gce", |dir| {
            vec!["--log-dir".into(), dir.display().to_string()]
        })
        .await
    }

    /// The Azure Resource Manager stand-in (Compute Gallery image versions,
    /// managed images, Entra ID tokens), every request and response validated
    /// against Azure's Swagger or the azure-mgmt-compute SDK (`hack/azure`).
    pub async fn azure() -> Result<Service, Error> {
        Service::start("azure", |dir| {
            vec!["--log-dir".into(), dir.display().to_string()]
        })
        .await
    }

    async fn start(
        name: &'static str,
        args: impl FnOnce(&Path) -> Vec<String>,
    ) -> Result<Service, Error> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("kiln-{name}-"))
            .tempdir()
            .map_err(io("creating a temporary directory"))?;
        let script = hack().join(name).join("run.py");
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args(args(dir.path()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(io(format!("starting {}", script.display())))?;
        let Some(stdout) = child.stdout.take() else {
            return Err(Error::NotReady {
                component: name,
                reason: "no stdout".into(),
                log: String::new(),
            });
        };
        let mut lines = BufReader::new(stdout).lines();
        // run.py waits on readiness itself and gives up on its own timeout.
        let line = tokio::time::timeout(Duration::from_secs(300), lines.next_line())
            .await
            .map_err(|_| Error::NotReady {
                component: name,
                reason: "no ready line within 300 s".into(),
                log: String::new(),
            })?
            .map_err(io(format!("reading {}", script.display())))?;
        let Some(line) = line else {
            let status = child.wait().await.map_err(io("waiting for run.py"))?;
            return Err(Error::NotReady {
                component: name,
                reason: format!("run.py exited with {status} (see its output above)"),
                log: String::new(),
            });
        };
        let info = serde_json::from_str(&line).map_err(|e| Error::NotReady {
            component: name,
            reason: format!("its ready line is not JSON ({e}): {line}"),
            log: String::new(),
        })?;
        Ok(Service {
            child,
            info,
            _dir: dir,
        })
    }

    /// A string field of the ready line.
    pub fn get(&self, pointer: &str) -> &str {
        self.info
            .pointer(pointer)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // SIGTERM lets run.py stop its children; they also get SIGTERM from
        // the kernel should it die first.
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
}
