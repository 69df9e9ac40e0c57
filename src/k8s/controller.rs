//! `portcullis controller`: watches the API with reflectors, assembles one config whenever
//! anything changes, swaps it into the in-process data plane, and (on the leader only)
//! writes status and Events.
//!
//! The watches record the keys of what changed (`Pending`), so that with 10,000 Ingresses
//! an edit re-translates the objects it concerns rather than the cluster; the Services,
//! EndpointSlices and Secrets translations read are kept up to date from the same keys.
//!
//! Every replica watches and serves; a Lease (kube-lease-manager) decides which one writes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, IngressLoadBalancerIngress};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::assemble::{Assembler, Kind, Object, ObjectKey, World};
use super::crd::{ProxyConfig, Route};
use super::objects::{Objects, ReadKey};
use super::sink::{Sink, SinkOutcome};
use super::status::StatusWriter;

/// How soon failed status, Event or store writes are tried again when nothing else changes.
const WRITE_RETRY: Duration = Duration::from_secs(5);
/// Coalesces bursts of watch events (an apply of many objects) into one assembly.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// The controller's settings: the flags of `portcullis controller`, parsed by clap straight
/// into this type, so the CLI and the controller cannot drift apart.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// The cluster-scoped ProxyConfig to read.
    #[arg(long, default_value = "global", env = "PORTCULLIS_CONFIG_NAME")]
    pub config_name: String,
    /// The controller's namespace (Lease; default for ProxyConfig Secret references).
    #[arg(long, default_value = "portcullis", env = "POD_NAMESPACE")]
    pub namespace: String,
    /// This replica's identity for leader election and Events (the pod name; the host name
    /// when unset).
    #[arg(long, env = "POD_NAME", default_value_t = host_name())]
    pub identity: String,
    /// Lease used for leader election.
    #[arg(long, default_value = "portcullis-leader")]
    pub lease_name: String,
    /// ConfigMap (in `--namespace`) where the leader keeps the last good version of every
    /// object that is invalid now, so that a restarted replica serves it too.
    #[arg(long, default_value = "portcullis-last-good")]
    pub last_good_configmap: String,
    /// ConfigMap (in `--namespace`) through which replicas share sign-outs: signed-out
    /// session ids and the time until which each is revoked.
    #[arg(long, default_value = super::revocations::DEFAULT_CONFIGMAP)]
    pub signed_out_configmap: String,
    /// `namespace/name` of the proxy's Service; its addresses go into Ingress status.
    #[arg(long, value_parser = parse_ns_name)]
    pub publish_service: Option<(String, String)>,
    /// A fixed address (IP or hostname) for Ingress status instead.
    #[arg(long, conflicts_with = "publish_service")]
    pub publish_address: Option<String>,
}

/// The pod's host name (its name in a cluster), the default identity.
fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname").map_or_else(|_| "portcullis".to_owned(), |h| h.trim().to_owned())
}

fn parse_ns_name(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok((ns.to_owned(), name.to_owned())),
        _ => Err(format!("{s:?}: expected namespace/name")),
    }
}

/// Every store the controller reads.
struct Stores {
    ingresses: Store<Ingress>,
    classes: Store<IngressClass>,
    routes: Store<Route>,
    configs: Store<ProxyConfig>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    secrets: Store<Secret>,
    stored: Store<ConfigMap>,
}

/// What the watches saw change since the last assembly: the keys (namespace, name) of the
/// objects to look at again, or `full` when something every object depends on changed.
#[derive(Default)]
struct Pending {
    /// An IngressClass, a ProxyConfig or the stored last good versions changed, or a watch
    /// listed again (and may have missed deletions): assemble everything.
    full: bool,
    ingresses: BTreeSet<(String, String)>,
    routes: BTreeSet<(String, String)>,
    services: BTreeSet<(String, String)>,
    slices: BTreeSet<(String, String)>,
    secrets: BTreeSet<(String, String)>,
}

/// Where the watch tasks leave their changes, and the wake-up of the assembly loop.
#[derive(Default)]
struct Changes {
    pending: std::sync::Mutex<Pending>,
    notify: Notify,
}

/// Which set of [`Pending`] a kind's changes go to.
#[derive(Clone, Copy)]
enum Track {
    Full,
    Ingress,
    Route,
    Service,
    Slice,
    Secret,
}

impl Changes {
    fn record(&self, track: Track, key: Option<(String, String)>) {
        {
            let mut p = crate::sync::lock(&self.pending);
            let set = match (track, key) {
                (Track::Full, _) | (_, None) => {
                    p.full = true;
                    None
                }
                (Track::Ingress, Some(k)) => Some((&mut p.ingresses, k)),
                (Track::Route, Some(k)) => Some((&mut p.routes, k)),
                (Track::Service, Some(k)) => Some((&mut p.services, k)),
                (Track::Slice, Some(k)) => Some((&mut p.slices, k)),
                (Track::Secret, Some(k)) => Some((&mut p.secrets, k)),
            };
            if let Some((set, k)) = set {
                set.insert(k);
            }
        }
        self.notify.notify_one();
    }

    fn take(&self) -> Pending {
        std::mem::take(&mut *crate::sync::lock(&self.pending))
    }
}

/// Which changes to an object of a kind set off an assembly.
#[derive(Clone, Copy)]
enum Reads {
    /// Any change (Services, whose status holds the published addresses; EndpointSlices,
    /// Secrets, ConfigMaps, IngressClasses).
    Everything,
    /// Everything but `status` (Ingresses, Routes, ProxyConfigs): the status is what the
    /// leader writes, and the translation never reads it, so the leader's own writes of
    /// thousands of statuses must not re-assemble the config thousands of times.
    AllButStatus,
}

fn watch<K>(api: Api<K>, reads: Reads, track: Track, changed: &Arc<Changes>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    watch_with(api, watcher::Config::default(), reads, track, changed)
}

fn watch_with<K>(api: Api<K>, config: watcher::Config, reads: Reads, track: Track, changed: &Arc<Changes>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    // What the store keeps is all the controller holds of the cluster: without the managed
    // fields and kubectl's copy of the last applied object, 10,000 Ingresses take a third of
    // the memory.
    let stream = watcher(api, config).default_backoff().modify(trim);
    let stream = reflector::reflector(writer, stream);
    let changed = changed.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut seen = Fingerprints::default();
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if seen.changes(reads, &event) {
                        let key = match &event {
                            watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                                Some((o.meta().namespace.clone().unwrap_or_default(), o.name_any()))
                            }
                            // A list just ended: whatever it missed, everything is looked at.
                            _ => None,
                        };
                        changed.record(track, key);
                    }
                }
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&K::DynamicType::default()), error = %e, "watch failed; retrying with backoff");
                }
            }
        }
    });
    reader
}

/// The annotation `kubectl apply` keeps a whole copy of the object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no translation reads before an object reaches a store.
fn trim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
    }
}

/// A hash of what the translation reads of each object of one watch, so that an update that
/// changes none of it (a status write) sets off no assembly.
#[derive(Default)]
struct Fingerprints {
    current: std::collections::HashMap<(Option<String>, String), u64>,
    /// Filled while a re-list is under way, then swapped in.
    relisting: std::collections::HashMap<(Option<String>, String), u64>,
}

impl Fingerprints {
    /// Records `event` and says whether it may change the assembled config.
    fn changes<K: Resource + serde::Serialize>(&mut self, reads: Reads, event: &watcher::Event<K>) -> bool {
        match (reads, event) {
            (Reads::Everything, watcher::Event::InitApply(_) | watcher::Event::Init) => false,
            (Reads::Everything, _) => true,
            (Reads::AllButStatus, watcher::Event::Apply(o)) => {
                let print = fingerprint(o);
                self.current.insert(key(o), print) != Some(print)
            }
            (Reads::AllButStatus, watcher::Event::Delete(o)) => {
                self.current.remove(&key(o));
                true
            }
            (Reads::AllButStatus, watcher::Event::Init) => {
                self.relisting.clear();
                false
            }
            (Reads::AllButStatus, watcher::Event::InitApply(o)) => {
                self.relisting.insert(key(o), fingerprint(o));
                false
            }
            (Reads::AllButStatus, watcher::Event::InitDone) => {
                std::mem::swap(&mut self.current, &mut self.relisting);
                self.relisting.clear();
                true
            }
        }
    }
}

fn key<K: Resource>(o: &K) -> (Option<String>, String) {
    (o.meta().namespace.clone(), o.meta().name.clone().unwrap_or_default())
}

/// The object without `status` and `metadata.resourceVersion`, hashed. The serialized form
/// covers every field, so nothing the translation reads can change unnoticed.
fn fingerprint<K: Resource + serde::Serialize>(o: &K) -> u64 {
    use std::hash::Hasher as _;
    let mut value = serde_json::to_value(o).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(serde_json::Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hasher.write(value.to_string().as_bytes());
    hasher.finish()
}

/// Runs the controller until `shutdown` resolves. `start` is called once with the first
/// config (to bind the listeners) and returns the [`Sink`] to update afterwards.
/// `overrides`: the environment's global settings ([`crate::source::env::env_overrides`]),
/// applied over the ProxyConfig.
pub async fn run<S, F, Fut>(
    client: Client,
    opts: Options,
    overrides: crate::source::env::EnvOverrides,
    start: F,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()>
where
    F: FnOnce(crate::config::Config) -> Fut,
    S: Sink + ?Sized,
    Fut: std::future::Future<Output = anyhow::Result<Arc<S>>>,
{
    if !overrides.is_empty() {
        tracing::info!(keys = ?overrides.keys(), "global settings from the environment override the ProxyConfig");
    }
    let changed = Arc::new(Changes::default());
    let stores = Stores {
        ingresses: watch(Api::all(client.clone()), Reads::AllButStatus, Track::Ingress, &changed),
        classes: watch(Api::all(client.clone()), Reads::Everything, Track::Full, &changed),
        routes: watch(Api::all(client.clone()), Reads::AllButStatus, Track::Route, &changed),
        configs: watch(Api::all(client.clone()), Reads::AllButStatus, Track::Full, &changed),
        services: watch(Api::all(client.clone()), Reads::Everything, Track::Service, &changed),
        slices: watch(Api::all(client.clone()), Reads::Everything, Track::Slice, &changed),
        secrets: watch(Api::all(client.clone()), Reads::Everything, Track::Secret, &changed),
        stored: watch_with(
            Api::namespaced(client.clone(), &opts.namespace),
            watcher::Config::default().fields(&format!("metadata.name={}", opts.last_good_configmap)),
            Reads::Everything,
            Track::Full,
            &changed,
        ),
    };
    let t = Instant::now();
    for ready in [
        stores.ingresses.wait_until_ready().await,
        stores.classes.wait_until_ready().await,
        stores.routes.wait_until_ready().await,
        stores.configs.wait_until_ready().await,
        stores.services.wait_until_ready().await,
        stores.slices.wait_until_ready().await,
        stores.secrets.wait_until_ready().await,
        stores.stored.wait_until_ready().await,
    ] {
        ready.map_err(|e| anyhow::anyhow!("a watch ended before its first list: {e}"))?;
    }
    tracing::info!(elapsed = ?t.elapsed(), "initial list of every watched kind complete");

    let leader = leader_election(client.clone(), &opts).await?;
    let mut assembler = Assembler::with_overrides(overrides);
    // What the first lists said is in the stores now; the changes they recorded are done with.
    changed.take();
    let mut objects = gather(&stores);
    let (config, outcome) = assemble(&mut assembler, &stores, &opts, &objects, None);
    let sink = start(config).await?;
    // Sign-outs on any replica reach this one's data plane, and this one's reach the others.
    let _shared = sink.revocations().map(|r| {
        super::revocations::share(client.clone(), &opts.namespace, &opts.signed_out_configmap, r, leader.clone())
    });
    record_rejections(&*sink, &outcome, false);
    tracing::info!(elapsed = ?t.elapsed(), routes = sink.route_count(), "serving the cluster config");
    let (outcomes, latest) = tokio::sync::watch::channel(Arc::new(outcome));
    let writer = StatusWriter::new(client.clone(), &opts.identity);
    let store = (opts.namespace.clone(), opts.last_good_configmap.clone());
    let status_task = tokio::spawn(write_status(writer, leader, latest, opts.identity.clone(), store));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                status_task.abort();
                return Ok(());
            }
            () = changed.notify.notified() => {}
        }
        tokio::time::sleep(DEBOUNCE).await;
        let t = Instant::now();
        let pending = changed.take();
        let (config, outcome) = if pending.full {
            objects = gather(&stores);
            assemble(&mut assembler, &stores, &opts, &objects, None)
        } else {
            let (objects_changed, reads) = catch_up(&stores, &mut objects, &pending);
            assemble(&mut assembler, &stores, &opts, &objects, Some((objects_changed, reads)))
        };
        let assembled = t.elapsed();
        let listener_errors = match sink.apply(config) {
            SinkOutcome::AppliedWithListenerErrors(errors) => {
                tracing::error!(?errors, "a listener could not move to its new address; it keeps the old one");
                true
            }
            SinkOutcome::Applied => false,
        };
        record_rejections(&*sink, &outcome, listener_errors);
        tracing::debug!(?assembled, applied = ?t.elapsed().saturating_sub(assembled), "config assembled and applied");
        // Never blocks: the status task picks up the newest outcome when it is free.
        outcomes.send_replace(Arc::new(outcome));
    }
}

/// `portcullis_config_last_reload_success` is 0 while any object of ours is rejected (it
/// serves its last good version or nothing) or a listener could not move: the config in
/// force is not the one the cluster asks for, which is what the chart's alert watches.
fn record_rejections<S: Sink + ?Sized>(sink: &S, outcome: &Outcome, listener_errors: bool) {
    let rejected = outcome.reports.iter().any(|r| matches!(r.verdict, super::assemble::Verdict::Rejected { .. }));
    if rejected || listener_errors {
        sink.reject();
    }
}

/// One assembly's conclusions, as the status task needs them.
struct Outcome {
    reports: Vec<Arc<super::assemble::Report>>,
    ingresses: Vec<Arc<Ingress>>,
    addresses: Vec<IngressLoadBalancerIngress>,
    /// The last good versions that should be stored, and what is stored now.
    to_store: BTreeMap<String, String>,
    stored: BTreeMap<String, String>,
}

/// Writes status and Events while this replica leads. It runs apart from the assembly loop
/// because writing a thousand statuses takes seconds of API calls, and a config edit must
/// reach the data plane meanwhile; intermediate outcomes are skipped, only the newest counts.
async fn write_status(
    mut writer: StatusWriter,
    mut leader: tokio::sync::watch::Receiver<bool>,
    mut outcomes: tokio::sync::watch::Receiver<Arc<Outcome>>,
    identity: String,
    (namespace, configmap): (String, String),
) {
    let mut was_leader = false;
    let mut failed = false;
    loop {
        let is_leader = *leader.borrow_and_update();
        if is_leader && !was_leader {
            tracing::info!(%identity, "became the leader: writing status and Events");
            writer.reset();
        }
        was_leader = is_leader;
        if is_leader {
            let o = outcomes.borrow_and_update().clone();
            let written = writer.write(&o.reports, &o.ingresses, &o.addresses).await;
            let stored = o.to_store == o.stored || writer.store_last_good(&namespace, &configmap, &o.to_store).await;
            failed = !(written && stored);
        }
        tokio::select! {
            r = leader.changed() => if r.is_err() { return },
            r = outcomes.changed() => if r.is_err() { return },
            () = tokio::time::sleep(WRITE_RETRY), if failed => {}
        }
    }
}

/// The Services, EndpointSlices and Secrets of the stores, as translations read them.
fn gather(s: &Stores) -> Objects {
    let mut objects = Objects::default();
    let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        (m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default())
    };
    objects.services = s.services.state().into_iter().map(|x| (key(&x.metadata), x)).collect::<BTreeMap<_, _>>();
    objects.secrets = s.secrets.state().into_iter().map(|x| (key(&x.metadata), x)).collect::<BTreeMap<_, _>>();
    for slice in s.slices.state() {
        objects.add_slice(slice);
    }
    objects
}

fn get<K>(store: &Store<K>, (namespace, name): &(String, String)) -> Option<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    store.get(&reflector::ObjectRef::new(name).within(namespace))
}

/// The Ingresses and Routes that changed, as they are now (`None`: deleted), and the lookup
/// keys of the Services, EndpointSlices and Secrets that changed.
type Changed = (Vec<(ObjectKey, Option<Object>)>, Vec<ReadKey>);

/// Brings `objects` up to date with the changed Services, EndpointSlices and Secrets of
/// `pending`, and returns the changed Ingresses and Routes as they are now with every
/// lookup key that changed: what [`Assembler::assemble_changes`] takes.
fn catch_up(s: &Stores, objects: &mut Objects, pending: &Pending) -> Changed {
    let mut reads = Vec::new();
    for k in &pending.services {
        reads.push(objects.set_service(k.clone(), get(&s.services, k)));
    }
    for k in &pending.secrets {
        reads.push(objects.set_secret(k.clone(), get(&s.secrets, k)));
    }
    for k in &pending.slices {
        reads.extend(objects.set_slice(k, get(&s.slices, k)));
    }
    let key = |kind, (namespace, name): &(String, String)| ObjectKey {
        kind,
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let mut changed = Vec::new();
    for k in &pending.ingresses {
        changed.push((key(Kind::Ingress, k), get(&s.ingresses, k).map(Object::Ingress)));
    }
    for k in &pending.routes {
        changed.push((key(Kind::Route, k), get(&s.routes, k).map(Object::Route)));
    }
    (changed, reads)
}

/// One assembly: of everything (`changes` is `None`), or of what changed.
fn assemble(
    assembler: &mut Assembler,
    s: &Stores,
    opts: &Options,
    objects: &Objects,
    changes: Option<Changed>,
) -> (crate::config::Config, Outcome) {
    let started = Instant::now();
    let ingresses = s.ingresses.state();
    let classes: Vec<IngressClass> = s.classes.state().iter().map(|c| (**c).clone()).collect();
    let routes = s.routes.state();
    let config = s.configs.state().into_iter().find(|c| c.name_any() == opts.config_name);
    let stored = s.stored.state().first().and_then(|cm| cm.data.clone()).unwrap_or_default();
    let world = World {
        ingresses: &ingresses,
        classes: &classes,
        routes: &routes,
        proxy_config: config.as_ref(),
        stored: &stored,
        objects,
        controller_namespace: &opts.namespace,
    };
    let gathered = started.elapsed();
    let full = changes.is_none();
    let (config, reports) = match changes {
        None => assembler.assemble(&world),
        Some((changed, reads)) => assembler.assemble_changes(&world, changed, &reads),
    };
    let translated = started.elapsed();
    let to_store = assembler.to_store(&reports);
    tracing::debug!(
        full,
        stores = ?gathered,
        assembler = ?translated.saturating_sub(gathered),
        to_store = ?started.elapsed().saturating_sub(translated),
        "assembly phases"
    );
    let outcome = Outcome { reports, ingresses, addresses: publish_addresses(s, opts), to_store, stored };
    (config, outcome)
}

/// What Ingress `status.loadBalancer` says: the fixed address, or the proxy Service's.
fn publish_addresses(s: &Stores, opts: &Options) -> Vec<IngressLoadBalancerIngress> {
    let entry = |a: &str| {
        if a.parse::<std::net::IpAddr>().is_ok() {
            IngressLoadBalancerIngress { ip: Some(a.to_owned()), ..Default::default() }
        } else {
            IngressLoadBalancerIngress { hostname: Some(a.to_owned()), ..Default::default() }
        }
    };
    if let Some(a) = &opts.publish_address {
        return vec![entry(a)];
    }
    let Some((ns, name)) = &opts.publish_service else { return Vec::new() };
    let Some(svc) =
        s.services.state().into_iter().find(|x| x.metadata.namespace.as_deref() == Some(ns) && &x.name_any() == name)
    else {
        return Vec::new();
    };
    let from_lb: Vec<_> = svc
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip.or(i.hostname))
        .map(|a| entry(&a))
        .collect();
    if !from_lb.is_empty() {
        return from_lb;
    }
    let spec = svc.spec.clone().unwrap_or_default();
    spec.external_ips
        .unwrap_or_default()
        .iter()
        .chain(spec.cluster_ip.iter())
        .filter(|a| *a != "None")
        .map(|a| entry(a))
        .collect()
}

async fn leader_election(client: Client, opts: &Options) -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, &opts.lease_name)
        .with_namespace(&opts.namespace)
        .with_identity(&opts.identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .map_err(|e| {
            anyhow::anyhow!("setting up leader election (Lease {}/{}): {e}", opts.namespace, opts.lease_name)
        })?;
    let (receiver, _task) = manager.watch().await;
    Ok(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::{IngressSpec, IngressStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    fn ingress(version: &str, class: &str) -> Ingress {
        Ingress {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            spec: Some(IngressSpec { ingress_class_name: Some(class.into()), ..IngressSpec::default() }),
            status: None,
        }
    }

    fn with_status(mut i: Ingress, ip: &str) -> Ingress {
        let lb = IngressLoadBalancerIngress { ip: Some(ip.into()), ..IngressLoadBalancerIngress::default() };
        i.status = Some(IngressStatus {
            load_balancer: Some(k8s_openapi::api::networking::v1::IngressLoadBalancerStatus {
                ingress: Some(vec![lb]),
            }),
        });
        i
    }

    #[test]
    fn a_status_write_sets_off_no_assembly_and_a_spec_edit_does() {
        let mut f = Fingerprints::default();
        let reads = Reads::AllButStatus;
        assert!(!f.changes(reads, &watcher::Event::<Ingress>::Init));
        assert!(!f.changes(reads, &watcher::Event::InitApply(ingress("1", "portcullis"))));
        assert!(f.changes(reads, &watcher::Event::<Ingress>::InitDone), "the first list is a change");
        let status = with_status(ingress("2", "portcullis"), "203.0.113.10");
        assert!(!f.changes(reads, &watcher::Event::Apply(status)), "status and resourceVersion only");
        assert!(f.changes(reads, &watcher::Event::Apply(ingress("3", "other"))), "spec edit");
        assert!(!f.changes(reads, &watcher::Event::Apply(ingress("4", "other"))), "the same again");
        assert!(f.changes(reads, &watcher::Event::Delete(ingress("5", "other"))));
        assert!(f.changes(reads, &watcher::Event::Apply(ingress("6", "other"))), "back after a delete");
        // A re-list replaces what was seen: an object gone meanwhile is forgotten.
        assert!(!f.changes(reads, &watcher::Event::<Ingress>::Init));
        assert!(f.changes(reads, &watcher::Event::<Ingress>::InitDone));
        assert!(f.current.is_empty());
    }

    #[test]
    fn kinds_whose_status_is_read_count_every_update() {
        let mut f = Fingerprints::default();
        let status = with_status(ingress("2", "portcullis"), "203.0.113.10");
        assert!(f.changes(Reads::Everything, &watcher::Event::Apply(ingress("1", "portcullis"))));
        assert!(f.changes(Reads::Everything, &watcher::Event::Apply(status)));
        assert!(!f.changes(Reads::Everything, &watcher::Event::InitApply(ingress("3", "portcullis"))));
    }

    #[test]
    fn stores_keep_neither_managed_fields_nor_the_last_applied_copy() {
        let mut i = ingress("1", "portcullis");
        i.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        i.metadata.annotations = Some(BTreeMap::from([
            (LAST_APPLIED.to_owned(), "{\"a whole copy\": true}".to_owned()),
            ("portcullis.io/timeout".to_owned(), "30s".to_owned()),
        ]));
        trim(&mut i);
        assert_eq!(i.metadata.managed_fields, None);
        let kept: Vec<&String> = i.metadata.annotations.as_ref().unwrap().keys().collect();
        assert_eq!(kept, ["portcullis.io/timeout"], "annotations the translation reads stay");
    }
}
