//! Sign-outs shared by every replica through one ConfigMap in the controller's namespace
//! (`--signed-out-configmap`, default `portcullis-signed-out`): its `data` maps a signed-out
//! session id to the unix time until which it is revoked (when the session would have
//! ended anyway, `cookie_expire` after sign-in). No database: the API server is the shared
//! store every replica already talks to.
//!
//! - A sign-out on any replica ([`crate::proxy::revocations::Publish`]) is queued, never
//!   awaited on the request path; a task sends it as a JSON merge patch adding its key
//!   (creating the ConfigMap the first time), batching what queued meanwhile, and retries
//!   with backoff while the API server is away.
//! - Every replica watches the ConfigMap and merges its entries into the data plane's
//!   [`Revocations`]: a sign-out reaches the others within a watch event's latency (well
//!   under the design's 2 s).
//! - The leader alone prunes entries whose time has passed, every [`PRUNE_EVERY`], with a
//!   merge patch that removes their keys; the list is as big as one `cookie_expire`'s
//!   sign-outs (docs/signin.md, "Sign-out across replicas").
//!
//! Session ids are never logged: a log line says how many.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::proxy::revocations::{Publish, Revocations};

/// The default name of the ConfigMap (`--signed-out-configmap`).
pub const DEFAULT_CONFIGMAP: &str = "portcullis-signed-out";
/// How often the leader removes the entries that have expired.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// The first wait before a failed write is tried again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The running share: aborts its tasks when dropped.
pub struct Shared {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Shares `revocations` with the other replicas through ConfigMap `namespace/name`: sets its
/// publisher, watches the ConfigMap, and prunes it while `leader` says this replica leads.
pub fn share(
    client: Client,
    namespace: &str,
    name: &str,
    revocations: Arc<Revocations>,
    leader: watch::Receiver<bool>,
) -> Shared {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let (tx, rx) = mpsc::unbounded_channel();
    revocations.set_publisher(Box::new(ConfigMapPublisher { tx }));
    let target = Target { api, namespace: namespace.to_owned(), name: name.to_owned() };
    let tasks = vec![
        tokio::spawn(publish_loop(target.clone(), rx)),
        tokio::spawn(watch_loop(target.clone(), revocations)),
        tokio::spawn(prune_loop(target, leader)),
    ];
    Shared { tasks }
}

/// Queues each sign-out for [`publish_loop`]: an unbounded channel's send never waits.
struct ConfigMapPublisher {
    tx: mpsc::UnboundedSender<(String, u64)>,
}

impl Publish for ConfigMapPublisher {
    fn publish(&self, sid: &str, until: u64) {
        // Closed only at shutdown, when there is no one left to tell.
        let _ = self.tx.send((sid.to_owned(), until));
    }
}

#[derive(Clone)]
struct Target {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
}

/// A ConfigMap key: `[-._a-zA-Z0-9]+`, at most 253 characters. Session ids are base64url,
/// so always one; anything else is never written (nor read).
fn valid_key(sid: &str) -> bool {
    !sid.is_empty() && sid.len() <= 253 && sid.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// The merge patch that lists `entries` (values are strings, as ConfigMap data is).
pub fn add_patch<'a>(entries: impl IntoIterator<Item = (&'a str, u64)>) -> Value {
    let data: serde_json::Map<String, Value> = entries
        .into_iter()
        .filter(|(sid, _)| valid_key(sid))
        .map(|(sid, until)| (sid.to_owned(), Value::String(until.to_string())))
        .collect();
    json!({ "data": data })
}

/// The merge patch that removes `sids` (`null` deletes a key in a JSON merge patch).
pub fn remove_patch<'a>(sids: impl IntoIterator<Item = &'a str>) -> Value {
    let data: serde_json::Map<String, Value> = sids.into_iter().map(|s| (s.to_owned(), Value::Null)).collect();
    json!({ "data": data })
}

/// The entries of the ConfigMap; keys that are not session ids and times that are not
/// numbers are skipped (someone else's edit must not stop the others from counting).
pub fn entries_of(cm: &ConfigMap) -> Vec<(String, u64)> {
    cm.data
        .iter()
        .flatten()
        .filter(|(sid, _)| valid_key(sid))
        .filter_map(|(sid, until)| Some((sid.clone(), until.trim().parse().ok()?)))
        .collect()
}

/// The keys the leader removes at `now`: entries whose time has passed, and values that are
/// not times (they would never expire otherwise).
pub fn expired(cm: &ConfigMap, now: u64) -> Vec<String> {
    cm.data
        .iter()
        .flatten()
        .filter(|(_, until)| until.trim().parse::<u64>().map_or(true, |u| u <= now))
        .map(|(sid, _)| sid.clone())
        .collect()
}

/// The ConfigMap as first created, holding `entries`.
fn new_configmap(name: &str, entries: &BTreeMap<String, u64>) -> ConfigMap {
    let mut cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "portcullis"}},
    }))
    .expect("a ConfigMap");
    cm.data = Some(entries.iter().filter(|(s, _)| valid_key(s)).map(|(s, u)| (s.clone(), u.to_string())).collect());
    cm
}

/// What became of one write.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    Done,
    /// Worth trying again (the API server is away, a conflict, throttling).
    Retry(String),
    /// Will never succeed as it is (the ConfigMap is full, the entry refused).
    Refused(String),
}

fn classify(e: &kube::Error) -> Written {
    match e {
        kube::Error::Api(s) if matches!(s.code, 400 | 413 | 422) => Written::Refused(e.to_string()),
        _ => Written::Retry(e.to_string()),
    }
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Adds `entries` to the ConfigMap, creating it when it is missing.
async fn write(t: &Target, entries: &BTreeMap<String, u64>) -> Written {
    let patch = Patch::Merge(add_patch(entries.iter().map(|(s, u)| (s.as_str(), *u))));
    let params = PatchParams::default();
    let merge = || t.api.patch(&t.name, &params, &patch);
    match merge().await {
        Ok(_) => Written::Done,
        Err(e) if is_code(&e, 404) => {
            match t.api.create(&PostParams::default(), &new_configmap(&t.name, entries)).await {
                Ok(_) => Written::Done,
                // Another replica created it meanwhile.
                Err(e) if is_code(&e, 409) => merge().await.map_or_else(|e| classify(&e), |_| Written::Done),
                Err(e) => classify(&e),
            }
        }
        Err(e) => classify(&e),
    }
}

/// Sends queued sign-outs, batching those that queue while a write is under way or waiting
/// to be retried; entries whose time passes while waiting are dropped.
async fn publish_loop(t: Target, mut rx: mpsc::UnboundedReceiver<(String, u64)>) {
    let mut pending: BTreeMap<String, u64> = BTreeMap::new();
    let mut backoff = RETRY_FIRST;
    loop {
        if pending.is_empty() {
            let Some((sid, until)) = rx.recv().await else { return };
            pending.insert(sid, until);
        }
        while let Ok((sid, until)) = rx.try_recv() {
            pending.insert(sid, until);
        }
        let now = unix_now();
        pending.retain(|sid, until| *until > now && valid_key(sid));
        if pending.is_empty() {
            continue;
        }
        match write(&t, &pending).await {
            Written::Done => {
                tracing::debug!(entries = pending.len(), configmap = %t.name, "sign-outs shared with the other replicas");
                pending.clear();
                backoff = RETRY_FIRST;
            }
            Written::Refused(error) => {
                tracing::error!(
                    %error, entries = pending.len(), namespace = %t.namespace, configmap = %t.name,
                    "the API server refused these sign-outs: other replicas do not see them (a full ConfigMap? see docs/signin.md)"
                );
                pending.clear();
            }
            Written::Retry(error) => {
                tracing::warn!(
                    %error, entries = pending.len(), namespace = %t.namespace, configmap = %t.name, retry_in = ?backoff,
                    "sharing sign-outs failed; retrying"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Merges every version of the ConfigMap into the data plane's list.
async fn watch_loop(t: Target, revocations: Arc<Revocations>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={}", t.name));
    let stream = watcher(t.api.clone(), config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => revocations.merge(entries_of(&cm)),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, configmap = %t.name, "watching sign-outs failed; retrying with backoff");
            }
        }
    }
}

/// On the leader: removes expired entries when it becomes the leader and every
/// [`PRUNE_EVERY`].
async fn prune_loop(t: Target, mut leader: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A new leader prunes at once, then every PRUNE_EVERY.
        tokio::select! {
            _ = tick.tick() => {}
            r = leader.changed() => if r.is_err() { return },
        }
        if !*leader.borrow() {
            continue;
        }
        let cm = match t.api.get_opt(&t.name).await {
            Ok(Some(cm)) => cm,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, configmap = %t.name, "reading sign-outs to prune failed; next time");
                continue;
            }
        };
        let gone = expired(&cm, unix_now());
        if gone.is_empty() {
            continue;
        }
        let patch = remove_patch(gone.iter().map(String::as_str));
        match t.api.patch(&t.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => tracing::debug!(removed = gone.len(), configmap = %t.name, "pruned expired sign-outs"),
            Err(e) => tracing::warn!(error = %e, configmap = %t.name, "pruning sign-outs failed; next time"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configmap(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(data.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn patches_add_and_remove_keys() {
        assert_eq!(
            add_patch([("abc-_9", 1_800_000_000), ("not/a key", 5)]),
            json!({"data": {"abc-_9": "1800000000"}}),
            "a merge patch of string values; what cannot be a key is left out"
        );
        assert_eq!(remove_patch(["a", "b"]), json!({"data": {"a": null, "b": null}}));
        let cm = new_configmap("portcullis-signed-out", &[("s1".to_owned(), 42)].into());
        let v = serde_json::to_value(&cm).unwrap();
        assert_eq!(v["metadata"]["name"], "portcullis-signed-out");
        assert_eq!(v["data"], json!({"s1": "42"}));
    }

    #[test]
    fn entries_are_read_and_pruned() {
        let cm = configmap(&[("a", "100"), ("b", " 300 "), ("c", "soon"), ("d/e", "400")]);
        let mut e = entries_of(&cm);
        e.sort();
        assert_eq!(e, [("a".to_owned(), 100), ("b".to_owned(), 300)], "unreadable entries are skipped");
        let mut gone = expired(&cm, 200);
        gone.sort();
        assert_eq!(gone, ["a", "c"], "expired, and what would never expire");
        assert!(expired(&cm, 99).iter().all(|k| k == "c"));
        assert!(entries_of(&ConfigMap::default()).is_empty() && expired(&ConfigMap::default(), 0).is_empty());
    }

    #[test]
    fn merged_entries_revoke_here() {
        let now = unix_now();
        let r = Revocations::default();
        let until = (now + 60).to_string();
        let past = (now - 1).to_string();
        r.merge(entries_of(&configmap(&[("live", until.as_str()), ("ended", past.as_str())])));
        assert!(r.is_revoked("live") && !r.is_revoked("ended"));
    }

    #[test]
    fn publishing_never_waits() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let p = ConfigMapPublisher { tx };
        for i in 0..10_000 {
            p.publish(&format!("s{i}"), 1);
        }
        assert_eq!(rx.try_recv().unwrap(), ("s0".to_owned(), 1));
        drop(rx);
        p.publish("after-shutdown", 1);
    }

    #[test]
    fn refusals_are_not_retried() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status { code, ..kube::core::Status::failure("x", "Invalid") }))
        };
        assert!(matches!(classify(&api(422)), Written::Refused(_)), "too large or invalid");
        assert!(matches!(classify(&api(403)), Written::Retry(_)), "RBAC may be fixed meanwhile");
        assert!(matches!(classify(&api(500)), Written::Retry(_)));
        assert!(matches!(classify(&api(429)), Written::Retry(_)));
        assert!(matches!(classify(&api(409)), Written::Retry(_)));
    }
}
