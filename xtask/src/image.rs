//! The container image, checked without a container engine: `cargo xtask image`.
//!
//! CI has no Docker engine, so `docker build` never runs there. What can be shown without one
//! is that the Dockerfile's build step works and that its result runs on the final stage's
//! base: this runs the Dockerfile's exact cargo command (a static glibc release binary) and
//! checks that
//!
//! - the Dockerfile still runs the same cargo command as this module (so the two cannot drift
//!   apart unnoticed) and its final stage is distroless/static with a numeric non-root `USER`;
//! - the binary is static: no program interpreter and no `DT_NEEDED` libraries, read from its
//!   ELF headers;
//! - no file the binary is built from (cargo's dep-info for it, plus the workspace manifests
//!   and Cargo.lock) is left out of the Docker build context by `.dockerignore`;
//! - it runs as the Dockerfile's `USER` in an otherwise empty root (`chroot`): only the
//!   binary, the passwd, group, nsswitch.conf and /tmp that distroless/static:nonroot has, and
//!   /etc/hosts and /etc/resolv.conf copied from this machine (Kubernetes mounts both into
//!   every container), and the device nodes every OCI runtime creates in /dev. No libc, no
//!   shell, no /proc. There, `version` prints the Cargo version, and `serve` proxies a request
//!   to the demo upstream named `localhost`, which only glibc's static getaddrinfo reading the
//!   root's /etc/hosts can resolve. Afterwards /tmp and the home directory, the only places
//!   the user could write to, are still empty: nothing in the way of readOnlyRootFilesystem.
//!
//! The device nodes matter: getrandom 0.3 (under `rand`) looks the libc `getrandom` function up
//! with `dlsym`, which finds nothing in a static binary, so it reads /dev/random and
//! /dev/urandom instead. Without them every request panics (a container always has them).
//!
//! Not exercised: `docker build` itself (BuildKit, the cache mounts, `COPY`, the base images'
//! real contents), the image's metadata (`EXPOSE`, labels, `ENTRYPOINT`/`CMD` as Docker
//! applies them) and the container runtime (namespaces, cgroups, seccomp). The chroot needs
//! root. The last line printed is `image: N passed, N failed`.

use std::fmt::Write as _;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};

use crate::standalone::{distinct_free_ports, http_get};
use crate::util::{self, Checks};

/// The one target the image is built for; explicit, so that `RUSTFLAGS` reaches only the
/// binary and not build scripts or proc-macros (which must stay dynamic host programs).
const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Statically linked glibc.
const RUSTFLAGS: &str = "-C target-feature=+crt-static";
/// The build, word for word as the Dockerfile's `RUN` has it (after `RUSTFLAGS="..."`).
const CARGO_BUILD: &[&str] = &["cargo", "build", "--release", "--locked", "--target", TARGET, "-p", "portcullis"];
/// The final stage's base image (any tag).
const BASE_IMAGE: &str = "gcr.io/distroless/static";
/// The demo upstream's `--name`, which proves the answer came from it.
const UPSTREAM_NAME: &str = "image-upstream";
/// How long the proxy and the upstream get to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// distroless/static's /etc/nsswitch.conf. Without the file glibc asks DNS before /etc/hosts.
const NSSWITCH: &str = "passwd: compat\ngroup: compat\nshadow: compat\ngshadow: files\nhosts: files dns\n\
                        networks: files\nprotocols: db files\nservices: db files\nethers: db files\n\
                        rpc: db files\nnetgroup: nis\n";
/// distroless's PATH; the rest of the environment is cleared, as in a container.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The character devices the OCI runtime spec requires in every container's /dev: name, major
/// and minor number.
const DEVICES: [(&str, u32, u32); 6] =
    [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

/// Builds the static binary as the Dockerfile does and runs every check on it; an error if one
/// fails or the build does. Returns the binary, the one the image ships.
pub fn run() -> anyhow::Result<PathBuf> {
    ensure!(effective_uid()? == 0, "cargo xtask image needs root: it runs the binary with chroot as another user");
    let root = util::root();
    let dockerfile = Dockerfile::read(&root.join("Dockerfile"))?;
    let mut checks = Checks::new("image");

    eprintln!("\n==> image: the Dockerfile against this check");
    checks.check("the Dockerfile runs the same cargo command as this check", || dockerfile.check_build_command());
    checks.check("the Dockerfile's final stage is distroless/static, non-root, entrypoint /portcullis", || {
        dockerfile.check_final_stage()
    });
    note_toolchain(&dockerfile);

    let binary = build(&root)?;
    let elf = std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    let linking = Linking::read(&elf).context("reading the ELF headers")?;
    eprintln!(
        "==> {}: {:.1} MiB, {}",
        binary.strip_prefix(&root).unwrap_or(&binary).display(),
        elf.len() as f64 / f64::from(1 << 20),
        if linking.pie { "static-pie" } else { "static" }
    );
    checks.check("static ELF: no program interpreter", || match &linking.interpreter {
        None => Ok(()),
        Some(interp) => bail!("PT_INTERP is {interp}: dynamically linked"),
    });
    checks.check("no NEEDED shared libraries", || {
        ensure!(linking.needed == 0, "{} DT_NEEDED entries (see readelf -d)", linking.needed);
        Ok(())
    });

    let workspace = Workspace::load(&root)?;
    checks.check("every file the binary is built from is in the Docker build context", || {
        let n = check_build_context(&root, &binary.with_extension("d"), &workspace.manifests)?;
        eprintln!("    {n} workspace files read by the build, none excluded by .dockerignore");
        Ok(())
    });

    let (uid, gid) = dockerfile.user;
    let empty = EmptyRoot::create(&binary, &dockerfile.entrypoint, dockerfile.user)?;
    eprintln!("\n==> image: the binary as {uid}:{gid} in an empty root ({})", empty.root.display());
    checks.check(&format!("`portcullis version` as {uid}:{gid} in an empty root prints {}", workspace.version), || {
        empty.check_version(&workspace.version)
    });
    let served =
        checks.check(&format!("`serve` and `demo-upstream` start as {uid}:{gid} in the empty root"), || empty.serve());
    checks.check("resolves localhost from /etc/hosts and proxies a request to the upstream", || {
        let served = served.as_ref().ok_or_else(|| anyhow!("not run: the proxy did not start"))?;
        served.check_proxied()
    });
    let ran = served.is_some();
    drop(served);
    checks.check("wrote no files, so readOnlyRootFilesystem works", || {
        ensure!(ran, "not run: the proxy did not start");
        empty.check_nothing_written()
    });

    if checks.all_passed() {
        let _ = std::fs::remove_dir_all(&empty.dir);
    } else {
        eprintln!("==> the empty root, config and logs are in {}", empty.dir.display());
    }
    checks.finish()?;
    Ok(binary)
}

/// The effective uid of this process, from /proc.
fn effective_uid() -> anyhow::Result<u32> {
    ids(std::process::id(), "Uid:")?.get(1).copied().context("no effective uid in /proc/self/status")
}

/// The ids on the `Uid:` or `Gid:` line of /proc/`pid`/status (real, effective, saved, fs).
fn ids(pid: u32, key: &str) -> anyhow::Result<Vec<u32>> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = status.lines().find_map(|l| l.strip_prefix(key)).with_context(|| format!("no {key} in {path}"))?;
    line.split_whitespace().map(|id| id.parse().with_context(|| format!("{key} {line:?} in {path}"))).collect()
}

/// The command line the Dockerfile must contain, as a shell would read it.
fn expected_command() -> String {
    format!("RUSTFLAGS=\"{RUSTFLAGS}\" {}", CARGO_BUILD.join(" "))
}

/// Where cargo puts the binary, relative to the workspace root.
fn binary_path() -> String {
    format!("target/{TARGET}/release/portcullis")
}

/// Runs the Dockerfile's build and returns the binary's path.
fn build(root: &Path) -> anyhow::Result<PathBuf> {
    eprintln!("\n==> static release build (the Dockerfile's build step): {}", expected_command());
    let started = Instant::now();
    let status = Command::new(CARGO_BUILD[0])
        .args(&CARGO_BUILD[1..])
        .env("RUSTFLAGS", RUSTFLAGS)
        // It would win over RUSTFLAGS.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .current_dir(root)
        .status()
        .context("running cargo")?;
    ensure!(status.success(), "the static release build failed ({status})");
    let took = started.elapsed().as_secs();
    eprintln!("==> static release build took {}m{:02}s", took / 60, took % 60);
    Ok(root.join(binary_path()))
}

/// Prints a note when the Dockerfile's Rust image and this machine's rustc differ (the build
/// here then shows less about the build there).
fn note_toolchain(dockerfile: &Dockerfile) {
    let image = dockerfile.build_image.as_str();
    let Some(wanted) = image.strip_prefix("rust:").and_then(|tag| tag.split('-').next()) else {
        eprintln!("==> note: the build stage's image {image} is not rust:<version>");
        return;
    };
    let local =
        Command::new("rustc").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    match local {
        Ok(v) if v.split_whitespace().nth(1).is_some_and(|v| v == wanted || v.starts_with(&format!("{wanted}."))) => {}
        Ok(v) => eprintln!("==> note: the Dockerfile builds with {image}, this machine with {}", v.trim()),
        Err(e) => eprintln!("==> note: rustc --version: {e}"),
    }
}

/// One Dockerfile instruction: the keyword, upper-cased, and its arguments with continuation
/// lines joined and every run of whitespace made one space.
#[derive(Debug, PartialEq)]
struct Instruction {
    keyword: String,
    args: String,
}

/// Splits a Dockerfile into instructions. Comment and empty lines are skipped, also inside a
/// continued instruction, as Docker does; heredocs are not supported.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        out.extend(instruction(&current));
        current.clear();
    }
    out.extend(instruction(&current));
    out
}

fn instruction(line: &str) -> Option<Instruction> {
    let mut words = line.split_whitespace();
    let keyword = words.next()?.to_ascii_uppercase();
    Some(Instruction { keyword, args: words.collect::<Vec<_>>().join(" ") })
}

/// What the checks need from the Dockerfile.
struct Dockerfile {
    /// The `RUN` that contains `cargo build` (there must be exactly one).
    build_run: String,
    /// The first stage's image.
    build_image: String,
    /// The last stage's image.
    final_image: String,
    /// The last stage's numeric `USER uid:gid`.
    user: (u32, u32),
    /// The first word of the last stage's `ENTRYPOINT` (exec form): the binary in the image.
    entrypoint: String,
}

impl Dockerfile {
    fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        let all = instructions(text);
        let runs: Vec<&Instruction> =
            all.iter().filter(|i| i.keyword == "RUN" && i.args.contains("cargo build")).collect();
        let [build_run] = runs.as_slice() else { bail!("{} RUN instructions run cargo build, not one", runs.len()) };
        let froms: Vec<usize> = all.iter().enumerate().filter(|(_, i)| i.keyword == "FROM").map(|(n, _)| n).collect();
        let (Some(&first), Some(&last)) = (froms.first(), froms.last()) else { bail!("no FROM") };
        let image = |i: &Instruction| {
            i.args.split(' ').find(|w| !w.starts_with("--")).map(str::to_owned).context("FROM without an image")
        };
        let final_stage = &all[last..];
        let stage_value = |keyword: &str| {
            final_stage
                .iter()
                .rev()
                .find(|i| i.keyword == keyword)
                .map(|i| i.args.clone())
                .with_context(|| format!("no {keyword} in the final stage"))
        };
        let user = stage_value("USER")?;
        let user = user
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
            .with_context(|| format!("USER {user}: expected numeric uid:gid"))?;
        let entrypoint = stage_value("ENTRYPOINT")?;
        let words: Vec<String> = serde_json::from_str(&entrypoint)
            .with_context(|| format!("ENTRYPOINT {entrypoint}: expected the exec form, a JSON array"))?;
        Ok(Self {
            build_run: build_run.args.clone(),
            build_image: image(&all[first])?,
            final_image: image(&all[last])?,
            user,
            entrypoint: words.into_iter().next().context("empty ENTRYPOINT")?,
        })
    }

    /// The `RUN` runs [`expected_command`] and copies the binary from where cargo puts it.
    fn check_build_command(&self) -> anyhow::Result<()> {
        let expected = expected_command();
        ensure!(
            self.build_run.contains(&expected),
            "its RUN is\n    {}\nbut this check builds with\n    {expected}\nchange both together",
            self.build_run
        );
        let binary = binary_path();
        ensure!(self.build_run.contains(&binary), "its RUN does not copy {binary}");
        Ok(())
    }

    /// The final stage is distroless/static, runs as a non-root uid and gid, and its entrypoint
    /// is the binary at /portcullis.
    fn check_final_stage(&self) -> anyhow::Result<()> {
        ensure!(self.final_image.starts_with(BASE_IMAGE), "FROM {}, not {BASE_IMAGE}", self.final_image);
        let (uid, gid) = self.user;
        ensure!(uid != 0 && gid != 0, "USER {uid}:{gid} is root");
        ensure!(self.entrypoint == "/portcullis", "ENTRYPOINT runs {}, not /portcullis", self.entrypoint);
        Ok(())
    }
}

/// What an ELF file's program headers say about how it is linked.
#[derive(Debug, PartialEq)]
struct Linking {
    /// `PT_INTERP`: the dynamic loader a dynamically linked executable names.
    interpreter: Option<String>,
    /// `DT_NEEDED` entries: shared libraries it needs.
    needed: usize,
    /// `ET_DYN`: position independent (static-pie when static).
    pie: bool,
}

impl Linking {
    /// Reads a 64-bit little-endian ELF file (x86_64).
    fn read(elf: &[u8]) -> anyhow::Result<Self> {
        const ET_DYN: u16 = 3;
        const PT_DYNAMIC: u32 = 2;
        const PT_INTERP: u32 = 3;
        const DT_NULL: u64 = 0;
        const DT_NEEDED: u64 = 1;
        ensure!(elf.starts_with(b"\x7fELF"), "not an ELF file");
        ensure!(elf.get(4..6) == Some(&[2, 1][..]), "not a 64-bit little-endian ELF file");
        let phoff = u64_at(elf, 0x20)?;
        let (phentsize, phnum) = (u64::from(u16_at(elf, 0x36)?), u16_at(elf, 0x38)?);
        let mut linking = Self { interpreter: None, needed: 0, pie: u16_at(elf, 0x10)? == ET_DYN };
        for n in 0..u64::from(phnum) {
            let header = phoff + n * phentsize;
            let (offset, size) = (u64_at(elf, header + 8)?, u64_at(elf, header + 32)?);
            let segment = usize::try_from(offset)
                .ok()
                .zip(usize::try_from(offset + size).ok())
                .and_then(|(start, end)| elf.get(start..end))
                .context("a segment beyond the end of the file")?;
            match u32::from_le_bytes(bytes_at(elf, header)?) {
                PT_INTERP => {
                    let path = segment.split(|&b| b == 0).next().unwrap_or_default();
                    linking.interpreter = Some(String::from_utf8_lossy(path).into_owned());
                }
                PT_DYNAMIC => {
                    for entry in segment.chunks_exact(16) {
                        match u64_at(entry, 0)? {
                            DT_NULL => break,
                            DT_NEEDED => linking.needed += 1,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(linking)
    }
}

fn bytes_at<const N: usize>(data: &[u8], at: u64) -> anyhow::Result<[u8; N]> {
    usize::try_from(at)
        .ok()
        .and_then(|at| data.get(at..at.checked_add(N)?))
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("truncated at byte {at}"))
}

fn u16_at(data: &[u8], at: u64) -> anyhow::Result<u16> {
    Ok(u16::from_le_bytes(bytes_at(data, at)?))
}

fn u64_at(data: &[u8], at: u64) -> anyhow::Result<u64> {
    Ok(u64::from_le_bytes(bytes_at(data, at)?))
}

/// The workspace as `cargo metadata` sees it.
struct Workspace {
    /// The portcullis package's version.
    version: String,
    /// Every member's Cargo.toml: cargo reads them all to load the workspace.
    manifests: Vec<PathBuf>,
}

impl Workspace {
    fn load(root: &Path) -> anyhow::Result<Self> {
        let out = Command::new("cargo")
            .args(["metadata", "--no-deps", "--format-version", "1", "--locked"])
            .current_dir(root)
            .stderr(Stdio::inherit())
            .output()
            .context("running cargo metadata")?;
        ensure!(out.status.success(), "cargo metadata failed ({})", out.status);
        let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
        let packages = metadata["packages"].as_array().context("cargo metadata without packages")?;
        let version = packages
            .iter()
            .find(|p| p["name"] == "portcullis")
            .and_then(|p| p["version"].as_str())
            .context("no portcullis package in cargo metadata")?;
        let manifests = packages.iter().filter_map(|p| p["manifest_path"].as_str()).map(PathBuf::from).collect();
        Ok(Self { version: version.to_owned(), manifests })
    }
}

/// Checks that `.dockerignore` excludes none of the workspace files the build reads: those in
/// cargo's dep-info for the binary (sources, and files they include), the members' manifests
/// and Cargo.lock. Returns how many files that is.
fn check_build_context(root: &Path, dep_info: &Path, manifests: &[PathBuf]) -> anyhow::Result<usize> {
    let ignore_path = root.join(".dockerignore");
    let ignore = std::fs::read_to_string(&ignore_path).with_context(|| format!("reading {}", ignore_path.display()))?;
    let ignore = DockerIgnore::parse(&ignore).with_context(|| format!("in {}", ignore_path.display()))?;
    let deps = std::fs::read_to_string(dep_info).with_context(|| format!("reading {}", dep_info.display()))?;
    let target = root.join("target");
    let mut files: Vec<PathBuf> = dep_info_files(&deps)
        .into_iter()
        .map(PathBuf::from)
        .chain(manifests.iter().cloned())
        .chain([root.join("Cargo.lock")])
        .filter(|f| !f.starts_with(&target))
        .filter_map(|f| f.strip_prefix(root).ok().map(Path::to_path_buf))
        .collect();
    files.sort();
    files.dedup();
    ensure!(
        files.iter().any(|f| f == Path::new("src/main.rs")),
        "src/main.rs is not among the files {} names",
        dep_info.display()
    );
    let excluded: Vec<String> = files.iter().filter(|f| ignore.excludes(f)).map(|f| f.display().to_string()).collect();
    ensure!(excluded.is_empty(), ".dockerignore excludes what the build reads: {}", excluded.join(", "));
    Ok(files.len())
}

/// The prerequisites in a Make-style dep-info file (cargo's `<binary>.d`): the words after each
/// `target:`, with `\ ` read as a space.
fn dep_info_files(text: &str) -> Vec<String> {
    let mut files = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, deps)) = line.split_once(": ") else { continue };
        let mut word = String::new();
        let mut chars = deps.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => word.extend(chars.next()),
                ' ' => files.extend((!word.is_empty()).then(|| std::mem::take(&mut word))),
                c => word.push(c),
            }
        }
        files.extend((!word.is_empty()).then_some(word));
    }
    files
}

/// `.dockerignore` rules: paths relative to the context root, with `*` and `?` within one path
/// component, `**` for any number of them, and `!` to take an earlier rule back. A rule that
/// matches a directory excludes everything in it. The last matching rule decides.
struct DockerIgnore(Vec<(bool, Vec<String>)>);

impl DockerIgnore {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let mut rules = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            ensure!(!pattern.contains(['[', '\\']), "{line}: [...] and \\ are not supported by this check");
            let components: Vec<String> =
                pattern.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_owned).collect();
            ensure!(!components.is_empty(), "{line}: an empty pattern");
            rules.push((exception, components));
        }
        Ok(Self(rules))
    }

    /// Whether the context leaves out `path` (relative to the context root).
    fn excludes(&self, path: &Path) -> bool {
        let components: Vec<String> = path.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        let components: Vec<&str> = components.iter().map(String::as_str).collect();
        let mut excluded = false;
        for (exception, pattern) in &self.0 {
            if (1..=components.len()).any(|n| path_matches(pattern, &components[..n])) {
                excluded = !exception;
            }
        }
        excluded
    }
}

fn path_matches(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => (0..=path.len()).any(|skip| path_matches(rest, &path[skip..])),
        Some((first, rest)) => path
            .split_first()
            .is_some_and(|(name, path)| glob(first.as_bytes(), name.as_bytes()) && path_matches(rest, path)),
    }
}

fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| glob(rest, &name[skip..])),
        Some((b'?', rest)) => !name.is_empty() && glob(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && glob(rest, &name[1..]),
    }
}

/// A root directory with the binary and what distroless/static:nonroot, the container runtime
/// and Kubernetes would put next to it, and nothing else.
struct EmptyRoot {
    /// Scratch directory: the root, logs and the config's original.
    dir: PathBuf,
    root: PathBuf,
    /// The binary's path inside the root.
    entrypoint: String,
    user: (u32, u32),
}

impl EmptyRoot {
    fn create(binary: &Path, entrypoint: &str, user: (u32, u32)) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("portcullis-image-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("root");
        let (uid, gid) = user;
        let hosts = std::fs::read_to_string("/etc/hosts").context("reading /etc/hosts")?;
        let has_localhost = hosts
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default())
            .any(|l| l.split_whitespace().skip(1).any(|name| name == "localhost"));
        let hosts = if has_localhost { hosts } else { format!("{hosts}\n127.0.0.1 localhost\n") };
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let files = [
            ("etc/hosts", hosts),
            ("etc/resolv.conf", resolv),
            ("etc/nsswitch.conf", NSSWITCH.to_owned()),
            (
                "etc/passwd",
                format!(
                    "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{uid}:{gid}:nonroot:/home/nonroot:/sbin/nologin\n"
                ),
            ),
            ("etc/group", format!("root:x:0:\nnonroot:x:{gid}:\n")),
        ];
        for (path, contents) in files {
            write(&root.join(path), contents.as_bytes())?;
        }
        let dev = root.join("dev");
        std::fs::create_dir_all(&dev)?;
        for (name, major, minor) in DEVICES {
            let path = dev.join(name);
            let (path, major, minor) = (path.to_string_lossy(), major.to_string(), minor.to_string());
            let status = Command::new("mknod").args(["-m", "666", &path, "c", &major, &minor]).status();
            ensure!(status.context("running mknod")?.success(), "mknod {path} failed");
        }
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))?;
        let home = root.join("home/nonroot");
        std::fs::create_dir_all(&home)?;
        std::os::unix::fs::chown(&home, Some(uid), Some(gid))?;
        let inside = root.join(entrypoint.trim_start_matches('/'));
        std::fs::copy(binary, &inside).with_context(|| format!("copying the binary to {}", inside.display()))?;
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self { dir, root, entrypoint: entrypoint.to_owned(), user })
    }

    /// `chroot --userspec=uid:gid <root> <entrypoint> args`, with a container's environment.
    fn command(&self, args: &[&str]) -> Command {
        let (uid, gid) = self.user;
        let mut command = Command::new("chroot");
        command
            .arg(format!("--userspec={uid}:{gid}"))
            .arg(&self.root)
            .arg(&self.entrypoint)
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/home/nonroot")
            .stdin(Stdio::null());
        command
    }

    /// The directories the user may write to (as in distroless) are still empty.
    fn check_nothing_written(&self) -> anyhow::Result<()> {
        for dir in ["tmp", "home/nonroot"] {
            let path = self.root.join(dir);
            let written: Vec<String> = std::fs::read_dir(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()?;
            ensure!(written.is_empty(), "it wrote /{dir}/{{{}}}", written.join(","));
        }
        Ok(())
    }

    fn check_version(&self, version: &str) -> anyhow::Result<()> {
        let out = self.command(&["version"]).output().context("running chroot")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "{}: {stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
        let expected = format!("portcullis {version}");
        ensure!(stdout.trim() == expected, "printed {:?}, expected {expected:?}", stdout.trim());
        Ok(())
    }

    /// Starts the demo upstream and `serve` in the root, waits until both are ready and checks
    /// that both run as the image's user.
    fn serve(&self) -> anyhow::Result<Served> {
        let [upstream, proxy, admin] = distinct_free_ports()?;
        let config = format!(
            "insecure_server: true\naddress: \"127.0.0.1:{proxy}\"\nadmin_address: \"127.0.0.1:{admin}\"\n\
             metrics_address: \"\"\nhttp_redirect_address: \"\"\nroutes:\n  - from: \"https://*\"\n    \
             to: [\"http://localhost:{upstream}\"]\n"
        );
        write(&self.root.join("config.yaml"), config.as_bytes())?;
        let mut served = Served { children: Vec::new(), proxy, upstream, log: self.dir.join("portcullis.log") };
        let listen = format!("127.0.0.1:{upstream}");
        served.spawn(
            self.command(&["demo-upstream", "--listen", &listen, "--name", UPSTREAM_NAME]),
            &self.dir.join("upstream.log"),
        )?;
        let log = served.log.clone();
        served.spawn(self.command(&["serve", "--config", "/config.yaml"]), &log)?;
        served.wait_ready(upstream, admin).with_context(|| served.log_tail())?;
        let (uid, gid) = self.user;
        for child in &served.children {
            let (uids, gids) = (ids(child.id(), "Uid:")?, ids(child.id(), "Gid:")?);
            ensure!(
                uids.iter().all(|&u| u == uid) && gids.iter().all(|&g| g == gid),
                "pid {} runs with uids {uids:?}, gids {gids:?}",
                child.id()
            );
        }
        Ok(served)
    }
}

fn write(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// The upstream and the proxy running in the root, killed when dropped, whatever failed.
struct Served {
    children: Vec<Child>,
    /// The proxy's plain HTTP port.
    proxy: u16,
    /// The demo upstream's port.
    upstream: u16,
    /// The proxy's log.
    log: PathBuf,
}

impl Served {
    fn spawn(&mut self, mut command: Command, log: &Path) -> anyhow::Result<()> {
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = command.stdout(out.try_clone()?).stderr(out).spawn().context("starting chroot")?;
        self.children.push(child);
        Ok(())
    }

    /// Polls until the upstream accepts connections and the proxy's admin `/readyz` answers 200.
    fn wait_ready(&mut self, upstream: u16, admin: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for child in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    bail!("a process exited early ({status})");
                }
            }
            let ready = TcpStream::connect(("127.0.0.1", upstream)).is_ok()
                && http_get(admin, "/readyz").is_ok_and(|r| r.starts_with("HTTP/1.1 200"));
            if ready {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "not ready after {READY_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One request through the proxy, answered by the upstream, which `serve` found as
    /// `localhost` through the root's /etc/hosts.
    fn check_proxied(&self) -> anyhow::Result<()> {
        let response = http_get(self.proxy, "/").context("sending a request to the proxy")?;
        let head = response.lines().next().unwrap_or_default();
        let named = format!("\"upstream\": \"{UPSTREAM_NAME}\"");
        ensure!(
            head.starts_with("HTTP/1.1 200") && response.contains(&named),
            "expected a 200 from {UPSTREAM_NAME}, got:\n{response}\n{}",
            self.log_tail()
        );
        eprintln!("    {head}, answered by {UPSTREAM_NAME} at http://localhost:{}", self.upstream);
        Ok(())
    }

    /// The proxy log's last lines, for an error message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let mut tail = format!("last lines of {}:", self.log.display());
        for line in &lines[lines.len().saturating_sub(20)..] {
            let _ = write!(tail, "\n    {line}");
        }
        tail
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_instructions_join_continuations_and_skip_comments() {
        let text = "# syntax=docker/dockerfile:1\nFROM rust:1 AS build\nRUN --mount=a \\\n    # a comment\n\n    \
                    FOO=\"x  y\" cargo build \\\n    && cp a b\nfrom scratch\nUSER 1:2\nENTRYPOINT [\"/p\"]\n";
        let all = instructions(text);
        assert_eq!(
            all[1],
            Instruction { keyword: "RUN".into(), args: "--mount=a FOO=\"x y\" cargo build && cp a b".into() }
        );
        let parsed = Dockerfile::parse(text).unwrap();
        assert_eq!((parsed.build_image.as_str(), parsed.final_image.as_str()), ("rust:1", "scratch"));
        assert_eq!((parsed.user, parsed.entrypoint.as_str()), ((1, 2), "/p"));
    }

    #[test]
    fn the_repository_dockerfile_passes() {
        let dockerfile = Dockerfile::read(&util::root().join("Dockerfile")).unwrap();
        dockerfile.check_build_command().unwrap();
        dockerfile.check_final_stage().unwrap();
    }

    #[test]
    fn dockerignore_rules() {
        let ignore = DockerIgnore::parse("# c\n/target\ndocs/\n**/*.swp\nbench/w?rk\n*.md\n!README.md\n").unwrap();
        let excluded = |p: &str| ignore.excludes(Path::new(p));
        assert!(excluded("target") && excluded("target/release/x") && !excluded("xtask/target/x"));
        assert!(excluded("docs/a.md") && excluded("src/x.swp") && excluded("x.swp") && excluded("bench/work/1"));
        assert!(excluded("CHANGES.md") && !excluded("README.md") && !excluded("e2e/README.md"));
        assert!(!excluded("src/main.rs") && !excluded("bench/results"));
        assert!(DockerIgnore::parse("[ab]\n").is_err());
    }

    #[test]
    fn dep_info_words() {
        let text = "/t/portcullis: /w/src/main.rs /w/my\\ file.rs\n\n/w/src/main.rs:\n# env-dep:X=1\n";
        assert_eq!(dep_info_files(text), ["/w/src/main.rs", "/w/my file.rs"]);
    }

    #[test]
    fn elf_linking_of_this_test_binary() {
        // The test binary is an ordinary dynamically linked executable.
        let elf = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let linking = Linking::read(&elf).unwrap();
        assert!(
            linking.interpreter.as_deref().is_some_and(|i| i.contains("ld-linux")) && linking.needed > 0,
            "{linking:?}"
        );
        assert!(Linking::read(b"\x7fELF\x02\x01").is_err() && Linking::read(b"#!/bin/sh").is_err());
    }
}
