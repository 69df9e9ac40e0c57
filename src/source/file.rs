//! The standalone YAML file: load it, overlay the environment, and watch it for edits. The
//! files it refers to (certificates, CAs) are read here, so the validator gets PEM bytes.
//!
//! Watching polls contents (the file and every file it references) once a second instead of
//! using inotify: editors replace files by rename and Kubernetes ConfigMap volumes swap
//! symlinks, and both defeat naive inotify watches. Hashing a few KiB a second is free.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::env::apply_env;
use super::yaml::{parse_config, yaml_to_value, Material};
use crate::config::{Config, ConfigErrors, FieldError};

/// A config file on disk plus the environment that overrides it.
#[derive(Clone, Debug)]
pub struct FileSource {
    path: PathBuf,
}

/// A successfully loaded config with the fingerprint of everything it was built from.
#[derive(Debug)]
pub struct Loaded {
    /// The validated config.
    pub config: Config,
    /// Paths read while loading (the file and referenced certificates).
    pub inputs: Vec<PathBuf>,
    /// Fingerprint of exactly the bytes this config was built from, so that the watcher
    /// cannot miss an edit made between the load and its first look.
    pub fingerprint: u64,
}

impl FileSource {
    /// A source for `path`; nothing is read yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The config file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads, overlays the environment and validates. Every error is returned at once.
    pub fn load(&self) -> Result<Loaded, ConfigErrors> {
        self.load_with_env(&|k| std::env::var(k).ok())
    }

    /// As [`Self::load`] with an explicit environment (tests).
    pub fn load_with_env(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, ConfigErrors> {
        let fail = |message: String| ConfigErrors(vec![FieldError { path: self.path.display().to_string(), message }]);
        let bytes = std::fs::read(&self.path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes.clone()).map_err(|_| fail("not UTF-8 text".to_owned()))?;
        let mut root = yaml_to_value(&text).map_err(fail)?;
        let from_env = apply_env(&mut root, env);
        let material = FileMaterial {
            base: self.path.parent().map(Path::to_path_buf).unwrap_or_default(),
            read: RefCell::default(),
        };
        let config = parse_config(&root, &material).map_err(|mut errs| {
            for e in &mut errs.0 {
                if let Some(var) = from_env.iter().find(|v| v.to_ascii_lowercase() == e.path) {
                    let _ = write!(e.message, " (from environment variable {var})");
                }
            }
            errs
        })?;
        let mut inputs = vec![(self.path.clone(), Some(bytes))];
        inputs.extend(material.read.into_inner());
        let fingerprint = hash_contents(&inputs);
        Ok(Loaded { config, inputs: inputs.into_iter().map(|(p, _)| p).collect(), fingerprint })
    }
}

/// Reads referenced files relative to the config file's directory and remembers them so
/// that the watcher notices when a certificate file changes.
struct FileMaterial {
    base: PathBuf,
    read: RefCell<Vec<(PathBuf, Option<Vec<u8>>)>>,
}

impl Material for FileMaterial {
    fn read(&self, reference: &str) -> Result<Vec<u8>, String> {
        let path = self.base.join(reference);
        let result = std::fs::read(&path);
        self.read.borrow_mut().push((path.clone(), result.as_ref().ok().cloned()));
        result.map_err(|e| format!("cannot read {}: {e}", path.display()))
    }
}

fn hash_contents(inputs: &[(PathBuf, Option<Vec<u8>>)]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    inputs.hash(&mut h);
    h.finish()
}

/// A cheap fingerprint of the current contents of `paths` (missing files hash as absent).
pub fn fingerprint(paths: &[PathBuf]) -> u64 {
    let inputs: Vec<_> = paths.iter().map(|p| (p.clone(), std::fs::read(p).ok())).collect();
    hash_contents(&inputs)
}

/// Polls the file (and what it references) and calls `on_change` with each new load result.
/// `inputs` and `last` come from the [`Loaded`] being served. Runs until aborted.
pub fn watch(
    source: FileSource,
    mut inputs: Vec<PathBuf>,
    mut last: u64,
    interval: Duration,
    on_change: impl Fn(Result<Loaded, ConfigErrors>) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let (src, ins) = (source.clone(), inputs.clone());
            let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&ins)).await else { continue };
            if now == last {
                continue;
            }
            last = now;
            let src2 = src.clone();
            let Ok(result) = tokio::task::spawn_blocking(move || src2.load()).await else { continue };
            if let Ok(loaded) = &result {
                inputs.clone_from(&loaded.inputs);
                last = loaded.fingerprint;
            }
            on_change(result);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn environment_overrides_file_and_is_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "timeout_read: 10s\n").unwrap();
        let src = FileSource::new(&path);
        let c = src.load_with_env(&|k| (k == "TIMEOUT_READ").then(|| "45s".to_owned())).unwrap();
        assert_eq!(c.config.settings.timeouts.read, Some(Duration::from_secs(45)));
        let e = src.load_with_env(&|k| (k == "TIMEOUT_IDLE").then(|| "forever".to_owned())).unwrap_err();
        assert!(e.to_string().contains("timeout_idle: invalid duration \"forever\""), "{e}");
        assert!(e.to_string().contains("environment variable TIMEOUT_IDLE"), "{e}");
    }

    #[test]
    fn missing_files_are_errors_with_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "certificates: [{cert_file: nope.pem, key_file: nope-key.pem}]\n").unwrap();
        let e = FileSource::new(&path).load_with_env(&|_| None).unwrap_err();
        assert!(e.to_string().contains("certificates[0].cert_file: cannot read"), "{e}");
        assert!(e.to_string().contains("certificates[0].key_file: cannot read"), "{e}");
        let e = FileSource::new(dir.path().join("absent.yaml")).load_with_env(&|_| None).unwrap_err();
        assert!(e.to_string().contains("cannot read"));
        std::fs::write(&path, "routes: [\n").unwrap();
        let e = FileSource::new(&path).load_with_env(&|_| None).unwrap_err();
        assert!(e.to_string().contains("invalid YAML"), "{e}");
    }
}
