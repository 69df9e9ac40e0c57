//! The environment as a config source: variables named after the scalar global keys
//! (upper-cased, `TIMEOUT_READ`) override the file's values and, in a cluster, the
//! ProxyConfig's. PRODUCT.md: a Deployment pins the addresses its ports, probes and Services
//! depend on, so that no config edit can move a listener away from them.

use serde_json::{Map, Value};

use super::yaml::{parse_config, read_settings, MappingReader, NoMaterial, GLOBAL_SCALAR_KEYS};
use crate::config::input::SettingsInput;
use crate::config::validate::Errors;
use crate::config::ConfigErrors;

/// Overlays the variables that are set onto a document's root mapping (a null root becomes
/// one). Returns the variables that were applied, for error messages.
pub fn apply_env(root: &mut Value, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut applied = Vec::new();
    if root.is_null() {
        *root = Value::Object(Map::new());
    }
    let Value::Object(map) = root else { return applied };
    for key in GLOBAL_SCALAR_KEYS {
        let var = key.to_ascii_uppercase();
        if let Some(v) = env(&var) {
            map.insert((*key).to_owned(), Value::String(v));
            applied.push(var);
        }
    }
    applied
}

/// The global settings the environment sets, validated on their own.
#[derive(Clone, Debug, Default)]
pub struct EnvOverrides {
    keys: Vec<&'static str>,
    settings: SettingsInput,
}

impl EnvOverrides {
    /// Whether no variable is set.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys that are overridden (`address`, ...), for the log.
    pub fn keys(&self) -> &[&'static str] {
        &self.keys
    }

    /// The overriding values, to lay over another source's settings.
    pub fn settings(&self) -> &SettingsInput {
        &self.settings
    }
}

/// The global settings the environment overrides. Errors are named by the variable
/// (`METRICS_ADDRESS: environment variable: ...`), since no file or object is at fault.
pub fn env_overrides(env: &dyn Fn(&str) -> Option<String>) -> Result<EnvOverrides, ConfigErrors> {
    let mut root = Value::Object(Map::new());
    let applied = apply_env(&mut root, env);
    if let Err(mut errs) = parse_config(&root, &NoMaterial) {
        for e in &mut errs.0 {
            if let Some(var) = applied.iter().find(|v| v.to_ascii_lowercase() == e.path) {
                e.path.clone_from(var);
                e.message.insert_str(0, "environment variable: ");
            }
        }
        return Err(errs);
    }
    let mut errs = Errors::default();
    let settings =
        MappingReader::new("", &root, &mut errs).map(|mut m| read_settings(&mut m, &NoMaterial)).unwrap_or_default();
    let keys =
        GLOBAL_SCALAR_KEYS.iter().copied().filter(|k| applied.iter().any(|v| v.eq_ignore_ascii_case(k))).collect();
    Ok(EnvOverrides { keys, settings })
}
