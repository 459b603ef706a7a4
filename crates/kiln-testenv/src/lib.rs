//! A real Kubernetes control plane on loopback, for tests and the local demo.
//!
//! Starts etcd and kube-apiserver (and optionally kube-controller-manager, so
//! Jobs get Pods) from the binaries `hack/testenv.sh` builds, with random
//! ports, TLS from a throw-away CA and RBAC authorization on. It hands out an
//! admin client (a `system:masters` client certificate) and clients for any
//! user and groups (the admin identity impersonating them, so RBAC is
//! evaluated for exactly that user).

mod services;
pub use services::Service;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use base64::Engine as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tokio::process::{Child, Command};

/// The binaries a control plane needs.
pub const BINARIES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/// Why a control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binaries are not where they were expected.
    #[error(
        "control-plane binary {0} not found: run `make testenv` and set KUBEBUILDER_ASSETS to the directory it prints"
    )]
    MissingBinary(PathBuf),
    /// `hack/testenv.sh` failed.
    #[error("hack/testenv.sh failed to provide the control plane: {0}")]
    Assets(String),
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Certificates could not be made.
    #[error("generating certificates: {0}")]
    Certificates(#[from] rcgen::Error),
    /// A component exited or never became ready.
    #[error(
        "{component} did not become ready: {reason}\n--- last lines of {component}'s log ---\n{log}"
    )]
    NotReady {
        /// etcd, kube-apiserver, ...
        component: &'static str,
        /// What was seen.
        reason: String,
        /// Tail of its log.
        log: String,
    },
    /// The kubeconfig was rejected by kube.
    #[error("building a client: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// A client could not be made.
    #[error("building a client: {0}")]
    Client(#[from] kube::Error),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// How to start the control plane.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Directory with the binaries; default `KUBEBUILDER_ASSETS`, else what
    /// `hack/testenv.sh` prints.
    pub assets: Option<PathBuf>,
    /// Also run kube-controller-manager (Jobs, garbage collection, default
    /// ServiceAccounts).
    pub controller_manager: bool,
    /// Keep state here instead of a temporary directory removed on drop.
    pub state_dir: Option<PathBuf>,
}

/// A running control plane. Dropping it stops every process.
pub struct ControlPlane {
    _tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    server: String,
    admin_kubeconfig: String,
    processes: Vec<(&'static str, Child)>,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver (and kube-controller-manager when asked)
    /// and waits until the apiserver reports ready.
    pub async fn start(options: Options) -> Result<Self, Error> {
        // kube uses ring; a process that also links aws-lc-rs must pick one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let assets = match options.assets.clone() {
            Some(dir) => dir,
            None => find_assets().await?,
        };
        for bin in BINARIES {
            if !options.controller_manager && bin == "kube-controller-manager" {
                continue;
            }
            let path = assets.join(bin);
            if !path.is_file() {
                return Err(Error::MissingBinary(path));
            }
        }

        let (tmp, dir) = match &options.state_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
                (None, dir.clone())
            }
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("kiln-testenv-")
                    .tempdir()
                    .map_err(io("creating a temporary directory"))?;
                let dir = tmp.path().to_path_buf();
                (Some(tmp), dir)
            }
        };

        let pki = Pki::generate()?;
        pki.write(&dir)?;

        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let api_port = free_port()?;
        let server = format!("https://127.0.0.1:{api_port}");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let admin_kubeconfig = kubeconfig_yaml(
            &server,
            &pki.ca_pem,
            &format!(
                "client-certificate-data: {}\n    client-key-data: {}",
                b64(&pki.admin_cert_pem),
                b64(&pki.admin_key_pem)
            ),
            "default",
        );
        std::fs::write(dir.join("admin.kubeconfig"), &admin_kubeconfig)
            .map_err(io("writing admin.kubeconfig"))?;

        let mut plane = ControlPlane {
            _tmp: tmp,
            dir: dir.clone(),
            server,
            admin_kubeconfig,
            processes: Vec::new(),
        };

        let etcd = spawn(
            &assets.join("etcd"),
            &[
                "--name=default".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            &dir.join("etcd.log"),
        )?;
        plane.processes.push(("etcd", etcd));

        let d = |f: &str| dir.join(f).display().to_string();
        let apiserver = spawn(
            &assets.join("kube-apiserver"),
            &[
                format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--cert-dir={}", d("apiserver-certs")),
                format!("--tls-cert-file={}", d("apiserver.crt")),
                format!("--tls-private-key-file={}", d("apiserver.key")),
                format!("--client-ca-file={}", d("ca.crt")),
                "--authorization-mode=RBAC".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", d("sa.pub")),
                format!("--service-account-signing-key-file={}", d("sa.key")),
                "--service-cluster-ip-range=10.96.0.0/24".into(),
                "--endpoint-reconciler-type=none".into(),
                "--allow-privileged=true".into(),
                "--enable-priority-and-fairness=false".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ],
            &dir.join("kube-apiserver.log"),
        )?;
        plane.processes.push(("kube-apiserver", apiserver));
        plane.wait_ready().await?;

        if options.controller_manager {
            let kcm = spawn(
                &assets.join("kube-controller-manager"),
                &[
                    format!("--kubeconfig={}", d("admin.kubeconfig")),
                    "--controllers=job-controller,garbage-collector-controller,serviceaccount-controller,namespace-controller,ttl-after-finished-controller".into(),
                    "--leader-elect=false".into(),
                    "--use-service-account-credentials=false".into(),
                    format!("--root-ca-file={}", d("ca.crt")),
                    format!("--service-account-private-key-file={}", d("sa.key")),
                    "--secure-port=0".into(),
                    "--v=1".into(),
                ],
                &dir.join("kube-controller-manager.log"),
            )?;
            plane.processes.push(("kube-controller-manager", kcm));
        }
        Ok(plane)
    }

    async fn wait_ready(&mut self) -> Result<(), Error> {
        let client = self.admin_client().await?;
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last;
        loop {
            for (name, child) in &mut self.processes {
                if let Ok(Some(status)) = child.try_wait() {
                    let name: &'static str = name;
                    return Err(self.not_ready(name, format!("exited with {status}")));
                }
            }
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| Error::NotReady {
                    component: "kube-apiserver",
                    reason: e.to_string(),
                    log: String::new(),
                })?;
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => last = body,
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                return Err(self.not_ready("kube-apiserver", format!("/readyz after 90s: {last}")));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn not_ready(&self, component: &'static str, reason: String) -> Error {
        Error::NotReady {
            component,
            reason,
            log: self.log_tail(component, 40),
        }
    }

    /// The last `lines` lines of a component's log (etcd, kube-apiserver,
    /// kube-controller-manager).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{component}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The apiserver's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The directory holding certificates, logs and etcd data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a kubeconfig for the admin (`system:masters`) identity.
    pub fn admin_kubeconfig_path(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// kube config for the admin identity.
    pub async fn admin_config(&self) -> Result<kube::Config, Error> {
        let kubeconfig = Kubeconfig::from_yaml(&self.admin_kubeconfig)?;
        Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
    }

    /// A client with cluster-admin rights.
    pub async fn admin_client(&self) -> Result<kube::Client, Error> {
        Ok(kube::Client::try_from(self.admin_config().await?)?)
    }

    /// kube config that acts as `user` in `groups`: RBAC sees exactly that
    /// identity (plus `system:authenticated`).
    pub async fn user_config(&self, user: &str, groups: &[&str]) -> Result<kube::Config, Error> {
        let mut config = self.admin_config().await?;
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups =
            Some(groups.iter().map(|g| (*g).to_owned()).collect());
        Ok(config)
    }

    /// A client acting as `user` in `groups`.
    pub async fn user_client(&self, user: &str, groups: &[&str]) -> Result<kube::Client, Error> {
        Ok(kube::Client::try_from(
            self.user_config(user, groups).await?,
        )?)
    }

    /// A client acting as a ServiceAccount, with the groups the apiserver
    /// gives ServiceAccounts.
    pub async fn service_account_client(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<kube::Client, Error> {
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let ns_group = format!("system:serviceaccounts:{namespace}");
        self.user_client(&user, &["system:serviceaccounts", &ns_group])
            .await
    }

    /// Writes a kubeconfig that authenticates as a ServiceAccount with a real
    /// token from the TokenRequest API (the ServiceAccount must exist), the
    /// way a Pod of that ServiceAccount would.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<PathBuf, Error> {
        use k8s_openapi::api::{
            authentication::v1::{TokenRequest, TokenRequestSpec},
            core::v1::ServiceAccount,
        };
        let api: kube::Api<ServiceAccount> =
            kube::Api::namespaced(self.admin_client().await?, namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = api
            .create_token_request(name, &Default::default(), &request)
            .await?
            .status
            .and_then(|s| s.token)
            .ok_or_else(|| Error::NotReady {
                component: "kube-apiserver",
                reason: format!("TokenRequest for {namespace}/{name} returned no token"),
                log: self.log_tail("kube-apiserver", 20),
            })?;
        let ca = std::fs::read_to_string(self.dir.join("ca.crt")).map_err(io("reading ca.crt"))?;
        let yaml = kubeconfig_yaml(&self.server, &ca, &format!("token: {token}"), namespace);
        let path = self.dir.join(format!("sa-{namespace}-{name}.kubeconfig"));
        std::fs::write(&path, yaml).map_err(io("writing a ServiceAccount kubeconfig"))?;
        Ok(path)
    }

    /// Stops every process, newest first.
    pub async fn stop(mut self) {
        self.stop_all().await;
    }

    async fn stop_all(&mut self) {
        while let Some((_, mut child)) = self.processes.pop() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for (_, child) in &mut self.processes {
            let _ = child.start_kill();
        }
    }
}

/// Finds the binaries: `KUBEBUILDER_ASSETS`, else `hack/testenv.sh` of this
/// source tree (which builds and caches them).
pub async fn find_assets() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS") {
        return Ok(PathBuf::from(dir));
    }
    // At run time first, as `services::hack` does.
    let script = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(|d| PathBuf::from(d).join("hack/testenv.sh"))
        .filter(|s| s.is_file())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/testenv.sh"));
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .await
        .map_err(io(format!("running {}", script.display())))?;
    if !out.status.success() {
        return Err(Error::Assets(format!("exit status {}", out.status)));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Child, Error> {
    let out = std::fs::File::create(log).map_err(io(format!("creating {}", log.display())))?;
    let err = out.try_clone().map_err(io("duplicating a log handle"))?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    cmd.spawn()
        .map_err(io(format!("starting {}", bin.display())))
}

fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io("finding a free port"))?
        .port();
    Ok(port)
}

struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
    service_account_key_pem: String,
    service_account_pub_pem: String,
}

impl Pki {
    fn generate() -> Result<Self, Error> {
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kiln-testenv-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let mut server = CertificateParams::new(vec![
            "localhost".to_owned(),
            "kubernetes.default.svc".to_owned(),
        ])?;
        server
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        server
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        let server_cert = server.signed_by(&server_key, &ca)?;

        let mut admin = CertificateParams::default();
        admin
            .distinguished_name
            .push(DnType::CommonName, "kiln-testenv-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_key = KeyPair::generate()?;
        let admin_cert = admin.signed_by(&admin_key, &ca)?;

        let sa_key = KeyPair::generate()?;
        Ok(Pki {
            ca_pem: ca.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            admin_cert_pem: admin_cert.pem(),
            admin_key_pem: admin_key.serialize_pem(),
            service_account_key_pem: sa_key.serialize_pem(),
            service_account_pub_pem: sa_key.public_key_pem(),
        })
    }

    fn write(&self, dir: &Path) -> Result<(), Error> {
        for (name, content) in [
            ("ca.crt", &self.ca_pem),
            ("apiserver.crt", &self.server_cert_pem),
            ("apiserver.key", &self.server_key_pem),
            ("sa.key", &self.service_account_key_pem),
            ("sa.pub", &self.service_account_pub_pem),
        ] {
            std::fs::write(dir.join(name), content).map_err(io(format!("writing {name}")))?;
        }
        Ok(())
    }
}

/// A kubeconfig for `server`, trusting `ca`, authenticating with `credentials`
/// (the YAML lines of a kubeconfig `user`).
fn kubeconfig_yaml(server: &str, ca: &str, credentials: &str, namespace: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kiln-testenv
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: kiln-testenv
  user:
    {credentials}
contexts:
- name: kiln-testenv
  context:
    cluster: kiln-testenv
    user: kiln-testenv
    namespace: {namespace}
current-context: kiln-testenv
"
    )
}

/// moto's EC2 stand-in, on loopback with a random port. Dropping it stops it.
pub struct Moto {
    child: Child,
    endpoint: String,
    _log_dir: tempfile::TempDir,
}

impl Moto {
    /// Starts `moto_server` from `PATH`, or from the venv `hack/setup.sh`
    /// makes, and waits until it answers.
    pub async fn start() -> Result<Self, Error> {
        let bin = which("moto_server").unwrap_or_else(|| {
            let cache = std::env::var_os("KILN_CACHE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    std::env::var_os("HOME")
                        .map(PathBuf::from)
                        .unwrap_or_default()
                        .join(".cache/kiln")
                });
            cache.join("venv/bin/moto_server")
        });
        if !bin.is_file() {
            return Err(Error::MissingBinary(bin));
        }
        let port = free_port()?;
        let log_dir = tempfile::Builder::new()
            .prefix("kiln-moto-")
            .tempdir()
            .map_err(io("creating a temporary directory"))?;
        let log = log_dir.path().join("moto.log");
        let child = spawn(
            &bin,
            &[
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ],
            &log,
        )?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut moto = Moto {
            child,
            endpoint,
            _log_dir: log_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(moto);
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(Error::NotReady {
                    component: "moto_server",
                    reason: format!("exited with {status}"),
                    log,
                });
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    component: "moto_server",
                    reason: "no answer after 30s".into(),
                    log: String::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The EC2 endpoint URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Finds an executable on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file())
}

/// Asks the kernel to SIGTERM a child when the thread that spawned it dies,
/// so a killed test leaves no apiserver or etcd running on.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// kiln's cache directory: `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`,
/// else `~/.cache/kiln` (as `hack/setup.sh` has it).
fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cache")
        })
        .join("kiln")
}

/// A current Packer (1.16) and its preinstalled plugins, as
/// `hack/packer/setup.sh` builds them into `<cache>/packer-current`
/// (`$KILN_PACKER_CURRENT` points elsewhere). Tests use Debian's packer 1.6.6
/// from `PATH` unless they start kiln with [`CurrentPacker::env`].
#[derive(Clone, Debug)]
pub struct CurrentPacker {
    root: PathBuf,
}

impl CurrentPacker {
    /// Finds it, or says how to build it.
    pub fn find() -> Result<CurrentPacker, Error> {
        let root = std::env::var_os("KILN_PACKER_CURRENT")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| cache_root().join("packer-current"));
        let packer = CurrentPacker { root };
        if !packer.packer().is_file() {
            return Err(Error::Assets(format!(
                "{} is missing: run hack/packer/setup.sh (or make setup)",
                packer.packer().display()
            )));
        }
        Ok(packer)
    }

    /// The directory holding the `packer` binary, for the front of `PATH`.
    pub fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }

    /// The `packer` binary.
    pub fn packer(&self) -> PathBuf {
        self.bin_dir().join("packer")
    }

    /// The installed plugins, for `PACKER_PLUGIN_PATH`.
    pub fn plugin_dir(&self) -> PathBuf {
        self.root.join("plugins")
    }

    /// The plugin sources installed (`github.com/hashicorp/amazon`, ...).
    pub fn installed_sources(&self) -> Vec<String> {
        let mut out = Vec::new();
        let dir = self.plugin_dir();
        for host in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            for org in std::fs::read_dir(host.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                for name in std::fs::read_dir(org.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if let Ok(rel) = name.path().strip_prefix(&dir) {
                        out.push(rel.to_string_lossy().into_owned());
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Environment for a process a test starts (`kiln controller`, whose
    /// runners inherit it): this Packer first on `PATH` and as
    /// `KILN_PACKER`, its plugins as `PACKER_PLUGIN_PATH`, and Packer's
    /// config in `config_dir` rather than `~/.config/packer`.
    pub fn env(&self, config_dir: &Path) -> Vec<(String, String)> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(
            std::iter::once(self.bin_dir()).chain(std::env::split_paths(&path)),
        )
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| self.bin_dir().display().to_string());
        vec![
            ("PATH".into(), path),
            ("KILN_PACKER".into(), self.packer().display().to_string()),
            (
                "PACKER_PLUGIN_PATH".into(),
                self.plugin_dir().display().to_string(),
            ),
            ("PACKER_CONFIG_DIR".into(), config_dir.display().to_string()),
            ("CHECKPOINT_DISABLE".into(), "1".into()),
        ]
    }
}
