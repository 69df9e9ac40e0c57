//! Processes and the machine: pinning, the children's lifetimes, ports, readiness, and CPU
//! time and memory read from `/proc`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::READY_TIMEOUT;
use crate::util;

pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Installs the Debian packages of `tools` (binary, package) with apt when one is missing: the machines are handed
/// over fresh, so the project has to install what it needs itself.
pub fn ensure_tools(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = tools.iter().filter(|(bin, _)| !on_path(bin)).map(|&(_, pkg)| pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    util::step("apt-get update", &["apt-get", "update"])?;
    let mut argv = vec!["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "--no-install-recommends"];
    argv.extend(&missing);
    util::step("install benchmark tools", &argv)?;
    if let Some((bin, pkg)) = tools.iter().find(|(bin, _)| !on_path(bin)) {
        bail!("{bin} is still not on PATH after installing {pkg}");
    }
    Ok(())
}

/// Which CPU each role runs on.
///
/// The proxy gets a CPU of its own; the upstream and the load generator share the other,
/// in the proxied runs and in the direct runs alike. So the work on the shared CPU per
/// request is the same on both paths, and the proxy never steals cycles from (or is starved
/// by) the client or the server. Pinned to one CPU, tokio sizes the proxy's runtime to one
/// worker thread (its default follows the affinity mask), as it would in a one-CPU pod.
#[derive(Clone, Copy, Debug)]
pub struct Pinning {
    pub proxy: Option<usize>,
    pub rest: Option<usize>,
}

impl Pinning {
    /// CPU 0 and CPU 1 when there are at least two; no pinning on a single CPU.
    pub fn detect() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        if cpus >= 2 {
            Self { proxy: Some(0), rest: Some(1) }
        } else {
            Self { proxy: None, rest: None }
        }
    }

    pub fn describe(&self) -> String {
        match (self.proxy, self.rest) {
            (Some(p), Some(r)) => format!(
                "pinning (taskset): every proxy (Portcullis; nginx with 1 worker, HAProxy with 1 thread, Traefik and Caddy \
                 with GOMAXPROCS=1, Pingora with threads: 1) on CPU {p}, only one of them under load at a time; demo upstream and load generator (one thread) on CPU {r}, the same in \
                 every run; CPU {p} idles during direct runs"
            ),
            _ => "no pinning (fewer than 2 CPUs): proxy, upstream and load generator share the CPU".to_owned(),
        }
    }

    /// `program` wrapped in `taskset -c CPU` when pinned (taskset execs, so the child's
    /// pid is the program's own).
    pub fn command(cpu: Option<usize>, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match cpu {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(c.to_string()).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }
}

/// A long-running child: the upstream or a proxy.
pub struct Service {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

/// Owns every long-running child. Dropping it (normal end, an error returned with `?`, or
/// a panic) kills and reaps them all, so a failed benchmark never leaves a proxy holding a
/// port or a CPU.
#[derive(Default)]
pub struct Services(pub Vec<Service>);

impl Services {
    /// Starts `cmd` with stdout and stderr in `log`; returns its pid.
    pub fn spawn(&mut self, name: &str, mut cmd: Command, log: PathBuf) -> anyhow::Result<u32> {
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
        let child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        let pid = child.id();
        eprintln!("==> bench: started {name} (pid {pid}): {cmd:?}");
        self.0.push(Service { name: name.to_owned(), child, log });
        Ok(pid)
    }

    /// Every child's pid and its descendants' (nginx's worker).
    pub fn pids(&self) -> HashSet<u32> {
        self.0.iter().flat_map(|s| process_tree(s.child.id())).collect()
    }

    /// Fails, with the end of its log, if any child has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for s in &mut self.0 {
            if let Some(status) = s.child.try_wait()? {
                bail!("{} exited ({status}); end of its log:\n{}", s.name, tail(&s.log, 20));
            }
        }
        Ok(())
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for s in &mut self.0 {
            // nginx's worker outlives a killed master (and keeps its listening sockets), so
            // the descendants go first.
            for pid in process_tree(s.child.id()).into_iter().skip(1) {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
            }
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
}

/// A scratch directory (configs, logs, h2load request logs), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `n` different free loopback ports (`free_port` binds and releases, so two calls could in
/// principle return the same port).
pub fn distinct_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n * 20 {
        let p = util::free_port()?;
        if !ports.contains(&p) {
            ports.push(p);
        }
        if ports.len() == n {
            return Ok(ports);
        }
    }
    bail!("could not find {n} distinct free ports")
}

/// One HTTP/1.1 GET with `Connection: close` over a plain socket; returns the status code
/// and the whole response (head and body) as text.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http_request(addr, path, &[&format!("Host: {addr}")])
}

/// One `GET path` over a new connection with these header lines (`Name: value`, `Host`
/// among them); the status and the whole response as text.
pub fn http_request(addr: SocketAddr, path: &str, headers: &[&str]) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut head = format!("GET {path} HTTP/1.1\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    s.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    s.take(16 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok());
    let status = status.with_context(|| format!("not an HTTP response: {:?}", text.lines().next().unwrap_or("")))?;
    Ok((status, text))
}

pub fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    http_get(addr, path).map(|(status, _)| status)
}

/// How many requests a proxy says it has answered: the sum of
/// `portcullis_http_requests_total` on its metrics listener.
pub fn proxy_answered(metrics: SocketAddr) -> anyhow::Result<u64> {
    let (status, text) = http_get(metrics, "/metrics").context("scraping the proxy's /metrics")?;
    if status != 200 {
        bail!("the proxy's /metrics answered {status}");
    }
    Ok(text
        .lines()
        .filter(|l| l.starts_with("portcullis_http_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// Polls `http://addr/path` until it answers 200, failing early if a child died.
pub fn wait_for_200(services: &mut Services, addr: SocketAddr, path: &str, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        services.check_alive()?;
        let last = match http_status(addr, path) {
            Ok(200) => return Ok(()),
            Ok(code) => format!("status {code}"),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("{what} (http://{addr}{path}) did not answer 200 within {READY_TIMEOUT:?}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------
// CPU accounting from /proc

/// `(command name, ppid, utime + stime in clock ticks)` from the text of `/proc/<pid>/stat`.
/// The name is in parentheses and may contain spaces, so fields are counted after the last
/// `)`.
pub fn parse_stat(stat: &str) -> Option<(String, u32, u64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat.get(open + 1..close)?.to_owned();
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15), numbered as in proc(5).
    Some((name, f.get(1)?.parse().ok()?, f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?))
}

/// Every userland process: pid → (command name, CPU ticks).
pub type ProcessTicks = HashMap<u32, (String, u64)>;

/// CPU ticks of one process (all its threads), `None` once it is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?).map(|(_, _, t)| t)
}

/// CPU ticks of every userland process (kernel threads, children of kthreadd, are left out:
/// they mostly run our own loopback traffic's softirqs).
pub fn all_process_ticks() -> ProcessTicks {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        if let Some((name, ppid, ticks)) = parse_stat(&stat) {
            if pid != 2 && ppid != 2 {
                out.insert(pid, (name, ticks));
            }
        }
    }
    out
}

/// CPU ticks used between two snapshots by processes not in `exclude` (nor this one): the
/// total, and the busiest process's name and ticks. A process that started in between counts
/// in full; one that ended in between is missed (so this is a lower bound).
pub fn foreign_usage(
    before: &ProcessTicks,
    after: &ProcessTicks,
    exclude: &HashSet<u32>,
) -> (u64, Option<(String, u64)>) {
    let me = std::process::id();
    let mut total = 0;
    let mut top: Option<(String, u64)> = None;
    for (pid, (name, ticks)) in after {
        if *pid == me || exclude.contains(pid) {
            continue;
        }
        let used = ticks.saturating_sub(before.get(pid).map_or(0, |(_, t)| *t));
        total += used;
        if used > top.as_ref().map_or(0, |(_, t)| *t) {
            top = Some((name.clone(), used));
        }
    }
    (total, top)
}

/// Share of one CPU that userland processes other than this one used over `window`: a
/// quick "is the machine quiet?" check before starting.
pub fn foreign_cpu_now(window: Duration) -> (f64, Option<String>) {
    let before = all_process_ticks();
    std::thread::sleep(window);
    let (used, top) = foreign_usage(&before, &all_process_ticks(), &HashSet::new());
    let share = |t: u64| t as f64 / clock_ticks_per_second() / window.as_secs_f64();
    (share(used), top.map(|(name, t)| format!("{name} {:.0}%", share(t) * 100.0)))
}

pub fn clock_ticks_per_second() -> f64 {
    command_output("getconf", &["CLK_TCK"]).and_then(|s| s.parse().ok()).unwrap_or(100.0)
}

/// The affinity list and thread count of a process, as evidence that pinning took.
pub fn affinity_and_threads(pid: u32) -> (String, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let allowed = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap_or("?").trim().to_owned();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
    (allowed, threads)
}

pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

pub fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// `root` and its descendants: nginx's master and worker, say.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            if let Some((_, ppid, _)) = parse_stat(&stat) {
                parents.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        out.extend(parents.get(&out[i]).into_iter().flatten());
        i += 1;
    }
    out
}

/// CPU ticks of a process and its descendants, `None` once the root is gone.
pub fn tree_ticks(root: u32) -> Option<u64> {
    let own = cpu_ticks(root)?;
    Some(own + process_tree(root).iter().skip(1).filter_map(|&p| cpu_ticks(p)).sum::<u64>())
}

/// Resident memory of a process and its descendants, in KiB (`VmRSS` of each).
pub fn tree_rss_kib(root: u32) -> u64 {
    process_tree(root)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_the_name() {
        let stat = "1234 (tokio runtime) S 77 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_stat(stat), Some(("tokio runtime".to_owned(), 77, 300)));
    }

    #[test]
    fn this_process_has_a_tree_and_memory() {
        let me = std::process::id();
        assert_eq!(process_tree(me)[0], me);
        assert!(tree_rss_kib(me) > 0);
        assert!(tree_ticks(me).is_some());
    }
}
