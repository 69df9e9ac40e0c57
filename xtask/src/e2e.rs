//! The end-to-end control plane: etcd and kube-apiserver built from Go modules (e2e/cluster).
//!
//! `cargo xtask e2e-cluster build` compiles the real `kube-apiserver` and `etcd` from the
//! versions pinned in `e2e/cluster/go.mod` into `target/e2e-bin/<k8s version>/` (skipped when
//! both binaries already exist there). `cargo xtask e2e-cluster up [--keep]` starts them in a
//! private network namespace, waits for `/readyz` and proves the cluster is real: `/version`,
//! the repository's CRDs becoming Established, and a Namespace, Service and EndpointSlice
//! (endpoint address 10.244.1.7) created and read back. Nothing is faked: the objects go
//! through the real apiserver's validation, admission and storage in a real etcd.
//!
//! Network namespace design: a holder process, `unshare --net sleep infinity`, owns a fresh
//! network namespace for as long as it lives; everything else joins it with
//! `nsenter --net=/proc/<holder>/ns/net`. This needs no named namespace under /run/netns (which
//! would outlive a crashed run) and the namespace disappears as soon as the holder and the
//! processes inside it exit. Inside it only `lo` exists; it is brought up and
//! `10.244.0.0/16` is routed as *local* on it, so test upstreams can later bind "pod IPs" like
//! 10.244.1.7 (EndpointSlices reject loopback addresses) while the apiserver and etcd listen on
//! 127.0.0.1 with fixed ports that cannot clash with anything on the host.
//!
//! Cleanup: [`Cluster`]'s `Drop` kills the apiserver, etcd and the holder (which removes the
//! namespace). Every child is additionally started under `setpriv --pdeathsig KILL`, so the
//! kernel kills it if xtask itself dies without unwinding (SIGKILL, Ctrl-C). The pdeath signal
//! fires when the *thread* that spawned the child exits, so start the cluster from a thread
//! that outlives it (the main thread does).
//!
//! `cargo xtask e2e` also hands the tests `PORTCULLIS_E2E_APISERVER`, a JSON file with the
//! apiserver's pid and exact command line, so that a test can kill it and start an identical
//! one (against the same etcd) to prove the controller survives an apiserver restart.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use serde::Deserialize as _;
use serde_json::{json, Value};

use crate::util;

/// The Go module that pins the control plane (relative to the workspace root).
const GO_MODULE_DIR: &str = "e2e/cluster";
/// The kube-apiserver main package inside k8s.io/kubernetes.
const APISERVER_PACKAGE: &str = "k8s.io/kubernetes/cmd/kube-apiserver";
/// etcd's server module root is its `main` package (a thin wrapper around `etcdmain.Main`).
const ETCD_PACKAGE: &str = "go.etcd.io/etcd/server/v3";
/// etcd client port inside the namespace (fixed: the namespace is private, nothing can clash).
const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd peer port inside the namespace.
const ETCD_PEER_PORT: u16 = 2380;
/// kube-apiserver secure port inside the namespace.
const APISERVER_PORT: u16 = 6443;
/// Service ClusterIP range; its first address (10.96.0.1) is in the serving certificate.
const SERVICE_CIDR: &str = "10.96.0.0/16";
/// Routed as local on `lo` inside the namespace: the "pod network" test upstreams listen on.
const POD_CIDR: &str = "10.244.0.0/16";
/// The pod IP the smoke check puts in an EndpointSlice.
const POD_IP: &str = "10.244.1.7";
/// Log name of the kube-apiserver a test starts after killing the original.
const RESTARTED_APISERVER: &str = "kube-apiserver-restarted";
/// How long the apiserver gets to become ready (cold start on a busy 2-core box takes ~20 s).
const READY_TIMEOUT: Duration = Duration::from_mins(3);

/// `cargo xtask e2e-cluster <build|up [--keep]>`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("build") => build().map(|_| ()),
        Some("up") => {
            let keep = match args.get(1).map(String::as_str) {
                None => false,
                Some("--keep") => true,
                Some(other) => bail!("e2e-cluster up: unknown argument {other:?} (only --keep)"),
            };
            up(keep)
        }
        _ => bail!(
            "usage: cargo xtask e2e-cluster <build|up [--keep]>\n  build  compile etcd and kube-apiserver \
             (cached in target/e2e-bin/<k8s version>)\n  up     start them in a private network namespace, \
             run the smoke checks, tear down (--keep: stay up until Ctrl-C)"
        ),
    }
}

/// The versions pinned in `e2e/cluster/go.mod`; they name the binary cache directory.
#[derive(Debug, Clone)]
pub struct Versions {
    /// `k8s.io/kubernetes`, e.g. `v1.36.5`; also what `/version` must report.
    pub kubernetes: String,
    /// `go.etcd.io/etcd/server/v3` (the version Kubernetes itself pins).
    pub etcd: String,
}

impl Versions {
    /// Reads the versions from go.mod, so the cache key cannot drift from what `go build` uses.
    fn from_go_mod() -> anyhow::Result<Self> {
        let path = util::root().join(GO_MODULE_DIR).join("go.mod");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let find = |module: &str| {
            text.lines()
                .map(|l| l.trim().trim_start_matches("require").split_whitespace().collect::<Vec<_>>())
                .find(|w| w.len() >= 2 && w[0] == module && w[1].starts_with('v'))
                .map(|w| w[1].to_string())
                .with_context(|| format!("{module} is not required in {}", path.display()))
        };
        Ok(Self { kubernetes: find("k8s.io/kubernetes")?, etcd: find(ETCD_PACKAGE)? })
    }
}

/// Paths of the built control-plane binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The pinned versions they were built from.
    pub versions: Versions,
    /// `target/e2e-bin/<k8s version>/etcd`.
    pub etcd: PathBuf,
    /// `target/e2e-bin/<k8s version>/kube-apiserver`.
    pub kube_apiserver: PathBuf,
}

/// Builds etcd and kube-apiserver unless both already exist in the versioned cache directory.
///
/// The directory is named after the Kubernetes version; etcd's version is fixed by it (go.mod
/// requires the etcd Kubernetes pins), so the one name keys both. Each binary is written to a
/// temporary name and renamed, so an interrupted build never leaves a truncated "cached" file.
pub fn build() -> anyhow::Result<Binaries> {
    let versions = Versions::from_go_mod()?;
    let dir = util::root().join("target/e2e-bin").join(&versions.kubernetes);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let bins = Binaries { etcd: dir.join("etcd"), kube_apiserver: dir.join("kube-apiserver"), versions };
    let minor = bins
        .versions
        .kubernetes
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .context("k8s version is not vMAJOR.MINOR.PATCH")?
        .to_string();
    // component-base/version defaults to v0.0.0-master+$Format:%H$; a real cluster reports its
    // release, and clients (kube-rs included) may look at it, so stamp it as Kubernetes' own
    // build (hack/lib/version.sh) does.
    let ldflags = format!(
        "-X k8s.io/component-base/version.gitVersion={v} -X k8s.io/component-base/version.gitMajor=1 \
         -X k8s.io/component-base/version.gitMinor={minor} -X k8s.io/component-base/version.gitTreeState=clean",
        v = bins.versions.kubernetes
    );
    // One scratch cache for both: they share most of their packages.
    let go = util::Go::new();
    go_build(&go, &bins.kube_apiserver, APISERVER_PACKAGE, &ldflags)?;
    go_build(&go, &bins.etcd, ETCD_PACKAGE, "")?;
    drop(go);
    eprintln!(
        "==> control plane: kube-apiserver {} and etcd {} in {}",
        bins.versions.kubernetes,
        bins.versions.etcd,
        dir.display()
    );
    Ok(bins)
}

/// `go build -o <out> <package>` inside the e2e module, unless `out` exists.
fn go_build(go: &util::Go, out: &Path, package: &str, ldflags: &str) -> anyhow::Result<()> {
    if out.exists() {
        eprintln!("==> {package}: cached at {}", out.display());
        return Ok(());
    }
    let tmp = out.with_extension("partial");
    eprintln!("\n==> go build {package} -> {}", out.display());
    let started = Instant::now();
    // util::Go sets GOTOOLCHAIN=local: go.mod's `go` line must be satisfiable by the installed Go.
    let status = go
        .command()
        .args(["build", "-o"])
        .arg(&tmp)
        .args(["-ldflags", ldflags, package])
        .current_dir(util::root().join(GO_MODULE_DIR))
        .status()
        .context("running go (is Go installed?)")?;
    ensure!(status.success(), "go build {package} failed ({status})");
    std::fs::rename(&tmp, out).with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    eprintln!("==> built {package} in {:.1?}", started.elapsed());
    Ok(())
}

/// `up`: build, start, smoke-check, then tear down (or wait for Ctrl-C with `--keep`).
fn up(keep: bool) -> anyhow::Result<()> {
    let bins = build()?;
    let started = Instant::now();
    let cluster = Cluster::start(&bins)?;
    eprintln!("==> cluster ready in {:.1?}", started.elapsed());
    let checks = Instant::now();
    if let Err(e) = smoke_check(&cluster, &bins.versions.kubernetes) {
        cluster.print_log_tails();
        return Err(e);
    }
    eprintln!("==> smoke checks passed in {:.1?}", checks.elapsed());
    if keep {
        let ns = cluster.netns();
        eprintln!(
            "\ncluster is up (Ctrl-C stops it and removes {dir}):\n  kubeconfig: {kc}\n  server:     {server} \
             (reachable only inside the network namespace)\n  shell:      nsenter --net={ns} bash\n  example:    \
             nsenter --net={ns} curl --cacert {dir}/ca.crt --cert {dir}/admin.crt --key {dir}/admin.key {server}/version",
            dir = cluster.dir.display(),
            kc = cluster.kubeconfig.display(),
            server = cluster.server,
        );
        // The processes die with us (pdeathsig), so "keep" means staying in the foreground.
        loop {
            std::thread::sleep(Duration::from_hours(1));
        }
    }
    drop(cluster);
    eprintln!("e2e-cluster: ok (torn down)");
    Ok(())
}

/// A running etcd + kube-apiserver in a private network namespace; dropping it tears it all down.
pub struct Cluster {
    /// Temp dir with keys, certificates, the kubeconfig, etcd data and logs.
    pub dir: PathBuf,
    /// Admin kubeconfig (client certificate with O=system:masters).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:6443`, valid inside the namespace only.
    pub server: String,
    /// `unshare --net sleep infinity`: owns the namespace.
    holder: Child,
    /// etcd and kube-apiserver, in start order (killed in reverse).
    processes: Vec<(&'static str, Child)>,
    /// kube-apiserver's binary and arguments, so a test can restart it exactly (see
    /// [`Cluster::write_apiserver_handle`]).
    apiserver_argv: Vec<String>,
}

impl Cluster {
    /// Creates the namespace, credentials and config, starts etcd and kube-apiserver, and waits
    /// for `/readyz`. On any error the partially started cluster is torn down by `Drop`.
    pub fn start(bins: &Binaries) -> anyhow::Result<Self> {
        ensure!(
            Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0"),
            "e2e-cluster up needs root (it creates a network namespace with unshare --net)"
        );
        remove_stale_dirs();
        let dir = std::env::temp_dir().join(format!("portcullis-e2e-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing stale {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let holder = spawn_guarded(Command::new("unshare").args(["--net", "sleep", "infinity"]), &dir, "netns-holder")?;
        let mut cluster = Self {
            kubeconfig: dir.join("kubeconfig"),
            server: format!("https://127.0.0.1:{APISERVER_PORT}"),
            dir,
            holder,
            processes: Vec::new(),
            apiserver_argv: Vec::new(),
        };
        cluster.wait_for_netns()?;
        cluster.netns_run(&["ip", "link", "set", "lo", "up"])?;
        cluster.netns_run(&["ip", "route", "add", "local", POD_CIDR, "dev", "lo"])?;

        let t = Instant::now();
        make_credentials(&cluster.dir)?;
        cluster.write_kubeconfig()?;
        eprintln!("==> keys and certificates in {:.1?} ({})", t.elapsed(), cluster.dir.display());

        let d = cluster.dir.clone();
        let p = |name: &str| d.join(name).display().to_string();
        let etcd_client = format!("http://127.0.0.1:{ETCD_CLIENT_PORT}");
        let etcd_peer = format!("http://127.0.0.1:{ETCD_PEER_PORT}");
        let etcd_args = [
            "--name=e2e".to_string(),
            format!("--data-dir={}", p("etcd-data")),
            format!("--listen-client-urls={etcd_client}"),
            format!("--advertise-client-urls={etcd_client}"),
            format!("--listen-peer-urls={etcd_peer}"),
            format!("--initial-advertise-peer-urls={etcd_peer}"),
            format!("--initial-cluster=e2e={etcd_peer}"),
            // Throwaway data: skipping fsync keeps etcd fast on a disk shared with cargo builds.
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ];
        cluster.start_in_netns("etcd", &bins.etcd, &etcd_args)?;

        let apiserver_args = [
            format!("--etcd-servers={etcd_client}"),
            format!("--secure-port={APISERVER_PORT}"),
            // Loopback of the private namespace: unreachable from the host, no port clashes.
            "--bind-address=127.0.0.1".to_string(),
            // The namespace has no default route, so the apiserver cannot pick an address to
            // advertise by itself (it would fail with "no default routes found").
            "--advertise-address=127.0.0.1".to_string(),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
            "--authorization-mode=RBAC".to_string(),
            // No kube-controller-manager or kubelets: nothing would keep the `kubernetes`
            // Service's endpoints alive, and tests write their own EndpointSlices anyway.
            "--endpoint-reconciler-type=none".to_string(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            format!("--cert-dir={}", p("apiserver-certs")),
            "--v=1".to_string(),
        ];
        cluster.start_in_netns("kube-apiserver", &bins.kube_apiserver, &apiserver_args)?;
        cluster.apiserver_argv =
            std::iter::once(bins.kube_apiserver.display().to_string()).chain(apiserver_args).collect();
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// `/proc/<holder>/ns/net`, the handle `nsenter --net=` takes.
    pub fn netns(&self) -> String {
        format!("/proc/{}/ns/net", self.holder.id())
    }

    /// A command that runs `argv` inside the namespace (nsenter execs it: same pid, no fork).
    pub fn netns_command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns())).arg("--").args(argv);
        cmd
    }

    /// Runs a short command inside the namespace and fails with its stderr if it fails.
    fn netns_run(&self, argv: &[&str]) -> anyhow::Result<String> {
        let out = self.netns_command(argv).output().with_context(|| format!("running nsenter {argv:?}"))?;
        ensure!(out.status.success(), "{argv:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `unshare` needs a moment to call unshare(2) before it execs sleep; until then the holder
    /// is still in our namespace and nsenter would configure the host's `lo`.
    fn wait_for_netns(&mut self) -> anyhow::Result<()> {
        let ours = std::fs::read_link("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.holder.try_wait()? {
                bail!("unshare --net exited early ({status}); see {}", self.dir.join("netns-holder.log").display());
            }
            if std::fs::read_link(self.netns()).is_ok_and(|ns| ns != ours) {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "unshare --net did not create a network namespace");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a control-plane binary inside the namespace, logging to `<dir>/<name>.log`.
    fn start_in_netns(&mut self, name: &'static str, binary: &Path, args: &[String]) -> anyhow::Result<()> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns())).arg("--").arg(binary).args(args);
        let child = spawn_guarded(&mut cmd, &self.dir, name)?;
        self.processes.push((name, child));
        Ok(())
    }

    /// Polls `/readyz` until it answers 200, failing early if a process dies.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            for (name, child) in &mut self.processes {
                if let Some(status) = child.try_wait()? {
                    let log = self.dir.join(format!("{name}.log"));
                    bail!("{name} exited ({status}) before the apiserver was ready:\n{}", tail(&log, 30));
                }
            }
            let last = match self.request("GET", "/readyz", None) {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("HTTP {code}: {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if started.elapsed() > READY_TIMEOUT {
                self.print_log_tails();
                bail!("kube-apiserver not ready after {READY_TIMEOUT:?}; last /readyz: {last}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// One HTTPS request to the apiserver as the admin user, made with curl inside the
    /// namespace (xtask has no TLS stack, and the server is only reachable in there).
    /// Returns the status code and the body.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, String)> {
        let d = &self.dir;
        let url = format!("{}{path}", self.server);
        let files = [d.join("ca.crt"), d.join("admin.crt"), d.join("admin.key")].map(|p| p.display().to_string());
        let mut argv = vec![
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            &files[0],
            "--cert",
            &files[1],
            "--key",
            &files[2],
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ];
        if body.is_some() {
            argv.extend(["-H", "Content-Type: application/json", "--data-binary", "@-"]);
        }
        argv.push(&url);
        let mut child = self
            .netns_command(&argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running curl")?;
        let mut stdin = child.stdin.take().expect("piped");
        if let Some(body) = body {
            stdin.write_all(body.to_string().as_bytes()).context("writing the request body to curl")?;
        }
        drop(stdin);
        let out = child.wait_with_output()?;
        ensure!(out.status.success(), "curl {method} {path}: {}", String::from_utf8_lossy(&out.stderr).trim());
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').context("curl printed no status code")?;
        Ok((code.trim().parse().context("curl status code")?, body.to_string()))
    }

    /// Like [`Cluster::request`], but expects `want` and a JSON body.
    pub fn json(&self, method: &str, path: &str, body: Option<&Value>, want: u16) -> anyhow::Result<Value> {
        let (code, text) = self.request(method, path, body)?;
        ensure!(code == want, "{method} {path}: HTTP {code} (wanted {want}): {}", text.trim());
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: body is not JSON: {text}"))
    }

    /// A kubeconfig for the admin client certificate (file paths, so it stays readable).
    fn write_kubeconfig(&self) -> anyhow::Result<()> {
        let d = self.dir.display();
        let server = &self.server;
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    \
             certificate-authority: {d}/ca.crt\nusers:\n- name: admin\n  user:\n    client-certificate: \
             {d}/admin.crt\n    client-key: {d}/admin.key\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    \
             user: admin\ncurrent-context: e2e\n"
        );
        std::fs::write(&self.kubeconfig, text).with_context(|| format!("writing {}", self.kubeconfig.display()))
    }

    /// The last lines of each process's log, for diagnosing a failed start or check (and of
    /// the apiserver a test restarted, if it did).
    pub fn print_log_tails(&self) {
        for (name, _) in &self.processes {
            eprintln!("--- {name} (last 30 lines) ---\n{}", tail(&self.dir.join(format!("{name}.log")), 30));
        }
        let restarted = self.dir.join(format!("{RESTARTED_APISERVER}.log"));
        if restarted.exists() {
            eprintln!("--- {RESTARTED_APISERVER} (last 30 lines) ---\n{}", tail(&restarted, 30));
        }
    }

    /// Writes `<dir>/kube-apiserver.json`, what a test needs to restart the apiserver:
    /// `{"pid": <running apiserver>, "argv": [binary, args...], "log": <file for the new one>}`.
    /// The test runs inside the namespace already, so `argv` is run as is (no nsenter). etcd
    /// keeps running, so every object survives the restart. Killing the old process is
    /// harmless to `Drop` (killing and reaping an exited child is a no-op); the new one is the
    /// test's child and dies with it.
    fn write_apiserver_handle(&self) -> anyhow::Result<PathBuf> {
        let pid = self
            .processes
            .iter()
            .find(|(name, _)| *name == "kube-apiserver")
            .map(|(_, child)| child.id())
            .context("kube-apiserver is not running")?;
        let path = self.dir.join("kube-apiserver.json");
        let handle = json!({
            "pid": pid,
            "argv": self.apiserver_argv,
            "log": self.dir.join(format!("{RESTARTED_APISERVER}.log")),
        });
        std::fs::write(&path, handle.to_string()).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Cluster {
    /// Kills the apiserver, then etcd, then the holder; the namespace goes with the last
    /// process in it. The temp dir is removed too (logs were printed on failure).
    fn drop(&mut self) {
        for (_, child) in self.processes.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Spawns `cmd` under `setpriv --pdeathsig KILL` (so it dies with xtask even if xtask is
/// killed outright) with stdout and stderr in `<dir>/<name>.log`. setpriv, nsenter and unshare
/// all exec their target, so the returned child's pid is the real process.
fn spawn_guarded(cmd: &mut Command, dir: &Path, name: &str) -> anyhow::Result<Child> {
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut guarded = Command::new("setpriv");
    guarded.args(["--pdeathsig", "KILL"]).arg(cmd.get_program()).args(cmd.get_args());
    guarded.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    guarded.spawn().with_context(|| format!("starting {name} (setpriv {})", cmd.get_program().display()))
}

/// Removes `portcullis-e2e-<pid>` temp dirs whose xtask is gone. `Drop` cannot run when xtask
/// is killed outright (the processes still die via pdeathsig), so the next run sweeps up.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("portcullis-e2e-")) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The last `n` lines of a file (or why it could not be read).
fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// openssl extension profiles for [`make_credentials`]. Written to a file and selected with
/// `-extensions`, so the result does not depend on the system openssl.cnf defaults.
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,\
DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
";

/// Creates, in `dir`: a CA (also the client CA), the apiserver serving certificate, an admin
/// client certificate in group system:masters (bound to cluster-admin by the default RBAC
/// policy), and the RSA service-account signing key pair. EC P-256 keys keep this fast.
fn make_credentials(dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("openssl.cnf"), OPENSSL_CNF)?;
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl").args(args).current_dir(dir).output().context("running openssl")?;
        ensure!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        Ok(())
    };
    run(&[
        &["req", "-x509", "-config", "openssl.cnf", "-extensions", "ca"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.crt", "-days", "7", "-subj", "/CN=portcullis-e2e-ca"],
    ]
    .concat())?;
    for (name, subject, profile) in [
        ("apiserver", "/CN=kube-apiserver", "server"),
        ("admin", "/O=system:masters/CN=portcullis-e2e-admin", "client"),
    ] {
        let (key, csr, crt) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"));
        run(&[
            &["req", "-new", "-config", "openssl.cnf"][..],
            &ec,
            &["-keyout", &key, "-out", &csr, "-subj", subject],
        ]
        .concat())?;
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "7",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            profile,
            "-out",
            &crt,
        ])?;
    }
    run(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key"])?;
    run(&["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    Ok(())
}

/// Proves the control plane is the real thing: version, CRDs, and core objects round-tripping
/// through validation, admission and etcd.
fn smoke_check(cluster: &Cluster, k8s_version: &str) -> anyhow::Result<()> {
    let version = cluster.json("GET", "/version", None, 200)?;
    eprintln!("==> /version: {version}");
    ensure!(version["gitVersion"] == k8s_version, "/version reports {}, wanted {k8s_version}", version["gitVersion"]);

    let route = cluster.netns_run(&["ip", "route", "get", POD_IP])?;
    ensure!(route.starts_with(&format!("local {POD_IP} ")), "{POD_IP} is not local in the namespace: {route}");
    eprintln!("==> in the namespace: {}", route.lines().next().unwrap_or_default());

    apply_crds(cluster)?;

    let ns = "portcullis-e2e";
    let created = cluster.json(
        "POST",
        "/api/v1/namespaces",
        Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
        201,
    )?;
    ensure!(created["status"]["phase"] == "Active", "namespace not Active: {created}");
    let service = cluster.json(
        "POST",
        &format!("/api/v1/namespaces/{ns}/services"),
        Some(&json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        })),
        201,
    )?;
    let cluster_ip = service["spec"]["clusterIP"].as_str().unwrap_or_default().to_string();
    ensure!(cluster_ip.starts_with("10.96."), "Service got no ClusterIP from {SERVICE_CIDR}: {service}");
    cluster.json(
        "POST",
        &format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"),
        Some(&json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "echo-1", "labels": {"kubernetes.io/service-name": "echo"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [POD_IP], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        })),
        201,
    )?;
    let read = cluster.json("GET", &format!("/api/v1/namespaces/{ns}/services/echo"), None, 200)?;
    ensure!(read["spec"]["clusterIP"] == cluster_ip.as_str(), "Service read back differs: {read}");
    let slice =
        cluster.json("GET", &format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/echo-1"), None, 200)?;
    ensure!(slice["endpoints"][0]["addresses"][0] == POD_IP, "EndpointSlice read back differs: {slice}");
    eprintln!(
        "==> namespace {ns}: Service echo (clusterIP {cluster_ip}), EndpointSlice echo-1 -> {POD_IP}:8080 read back"
    );
    Ok(())
}

/// The chart as a user installs it, with `e2e/chart-values.yaml`: `helm install` against the
/// real API server, which validates every object (no kubelet runs, so no pod starts; the
/// tests check the objects). First the namespace, labelled to enforce the restricted Pod
/// Security Standard (the tests create a pod from the Deployment's template there), and
/// minimal ServiceMonitor and PrometheusRule CRDs, so that the chart sees the
/// monitoring.coreos.com API through discovery and renders its monitoring objects.
fn install_chart(cluster: &Cluster, helm: &Path) -> anyhow::Result<()> {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "portcullis", "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    cluster.json("POST", "/api/v1/namespaces", Some(&ns), 201)?;
    apply_crd_file(cluster, &util::root().join("e2e/cluster/monitoring-crds.yaml"))?;
    let root = util::root();
    let chart = root.join("charts/portcullis");
    let values = root.join("e2e/chart-values.yaml");
    let argv = [
        &*helm.to_string_lossy(),
        "install",
        "portcullis",
        &*chart.to_string_lossy(),
        "--namespace",
        "portcullis",
        "--values",
        &*values.to_string_lossy(),
    ];
    eprintln!("\n==> {}", argv.join(" "));
    let out = cluster
        .netns_command(&argv)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("HELM_CACHE_HOME", cluster.dir.join("helm/cache"))
        .env("HELM_CONFIG_HOME", cluster.dir.join("helm/config"))
        .env("HELM_DATA_HOME", cluster.dir.join("helm/data"))
        .output()
        .context("running helm install")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "helm install failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");
    Ok(())
}

/// POSTs every CustomResourceDefinition in `crds/portcullis.io.yaml` and waits until each is
/// Established (the apiserver serves its resource).
pub fn apply_crds(cluster: &Cluster) -> anyhow::Result<()> {
    apply_crd_file(cluster, &util::root().join("crds/portcullis.io.yaml"))
}

/// POSTs every CustomResourceDefinition in the YAML file `path` and waits until each is
/// Established.
fn apply_crd_file(cluster: &Cluster, path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut names = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let crd = Value::deserialize(doc).with_context(|| format!("parsing {}", path.display()))?;
        if crd.is_null() {
            continue; // an empty document (e.g. after a leading `---`)
        }
        ensure!(
            crd["kind"] == "CustomResourceDefinition",
            "unexpected document in {}: {}",
            path.display(),
            crd["kind"]
        );
        cluster.json("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", Some(&crd), 201)?;
        names.push(crd["metadata"]["name"].as_str().context("CRD without metadata.name")?.to_string());
    }
    ensure!(!names.is_empty(), "no CRDs in {}", path.display());
    let deadline = Instant::now() + Duration::from_mins(1);
    for name in &names {
        loop {
            let crd = cluster.json(
                "GET",
                &format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"),
                None,
                200,
            )?;
            let established = crd["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Established" && c["status"] == "True"));
            if established {
                eprintln!("==> CRD {name}: Established");
                break;
            }
            ensure!(Instant::now() < deadline, "CRD {name} not Established: {}", crd["status"]);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

/// The real programs the tunnel steps reach through the proxy (OpenSSH's sshd and client,
/// dnsmasq, dig), installed with apt-get when missing: the tests run inside the namespace,
/// which has no network. One install at a time across processes (`flock`). The packages'
/// services are not started (a policy-rc.d refusing them for the install, unless the machine
/// has one): nothing may listen on the host's 22 and 53 because of a test.
fn install_tunnel_programs() -> anyhow::Result<()> {
    let needed = ["/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/ssh-keygen", "/usr/sbin/dnsmasq", "/usr/bin/dig"];
    if needed.iter().all(|p| Path::new(p).exists()) {
        return Ok(());
    }
    eprintln!("==> installing openssh-server, openssh-client, dnsmasq and bind9-dnsutils with apt-get");
    let script = "set -e; own=; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
                  chmod 755 /usr/sbin/policy-rc.d; own=1; fi; \
                  trap 'if [ -n \"$own\" ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT; \
                  export DEBIAN_FRONTEND=noninteractive; apt-get update -q; \
                  apt-get install -y -q --no-install-recommends openssh-server openssh-client dnsmasq bind9-dnsutils";
    let status = Command::new("flock")
        .args(["/tmp/portcullis-tunnel-programs.lock", "sh", "-c", script])
        .status()
        .context("running apt-get (as root) for the tunnel steps' programs")?;
    if !status.success() {
        bail!("installing openssh-server, openssh-client, dnsmasq and bind9-dnsutils failed ({status})");
    }
    Ok(())
}

/// `cargo xtask e2e`: builds the control plane and the tests, starts the cluster, installs the
/// Helm chart into it (CRDs included) as a user would, and runs the `portcullis-e2e` tests
/// inside the cluster's network namespace.
pub fn suite() -> anyhow::Result<()> {
    util::step("build portcullis", &["cargo", "build", "--package", "portcullis"])?;
    util::step("build the end-to-end tests", &["cargo", "test", "--package", "portcullis-e2e", "--no-run"])?;
    let helm = crate::chart::helm()?;
    // The sign-in step runs node's oidc-provider inside the namespace, which has no network:
    // its modules are installed here, where the tests' harness finds them.
    crate::bench::install_provider()?;
    install_tunnel_programs()?;
    let bins = build()?;
    let started = Instant::now();
    let cluster = Cluster::start(&bins)?;
    install_chart(&cluster, &helm)?;
    eprintln!("==> cluster ready with the chart installed in {:.1?}", started.elapsed());
    let bin = util::target_dir().join("debug/portcullis");
    let apiserver = cluster.write_apiserver_handle()?;
    let tests_started = Instant::now();
    let status = cluster
        .netns_command(&["cargo", "test", "--package", "portcullis-e2e", "--", "--nocapture"])
        .env("PORTCULLIS_E2E_KUBECONFIG", &cluster.kubeconfig)
        .env("PORTCULLIS_E2E_APISERVER", &apiserver)
        .env("PORTCULLIS_BIN", &bin)
        .env("CARGO_NET_OFFLINE", "true")
        .current_dir(util::root())
        .status()
        .context("running the end-to-end tests")?;
    if !status.success() {
        cluster.print_log_tails();
        let log = std::env::temp_dir().join("portcullis-e2e-controller.log");
        eprintln!("--- controller log ({}):\n{}", log.display(), tail(&log, 60));
        bail!("end-to-end tests failed ({status})");
    }
    eprintln!("==> end-to-end tests passed in {:.1?}", tests_started.elapsed());
    Ok(())
}
