//! Combines every translated object into the one `Config` the data plane serves, applying
//! PRODUCT.md's "Bad input" rule: a bad object keeps its last good version serving and
//! affects no other object; an object that leaves our IngressClass is removed; when two
//! objects claim the same host and path, the older one keeps it.
//!
//! Pure and synchronous: the controller calls it with what its reflectors hold and writes the
//! returned reports to the API (status, Events) when it is the leader.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::{Resource, ResourceExt};

use super::crd::{ProxyConfig, Route as RouteResource};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::ingress::translate_ingress;
use super::objects::{Objects, Read, ReadKey};
use super::owners::Owners;
use super::proxy_config::translate_proxy_config;
use super::route::translate_route;
use super::translate::{ingress_class, ClassDecision, Translated};
use crate::config::fields::KeyPath;
use crate::config::validate::{self, Errors};
use crate::config::{Config, FieldError, Settings};
use crate::source::env::EnvOverrides;

/// Which kind of object a report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// networking.k8s.io/v1 Ingress.
    Ingress,
    /// portcullis.io/v1alpha1 Route.
    Route,
    /// portcullis.io/v1alpha1 ProxyConfig.
    ProxyConfig,
}

/// An object's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Its kind.
    pub kind: Kind,
    /// Namespace (empty for cluster-scoped).
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// What happened to one object in this assembly.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Translated and serving.
    Accepted {
        /// Non-fatal problems (Warning Events).
        warnings: Vec<FieldError>,
        /// Routes dropped because an older object owns the same host and path.
        conflicts: Vec<String>,
    },
    /// Rejected; `serving_last_good` says whether an earlier version keeps serving.
    Rejected {
        /// Every error.
        errors: Vec<FieldError>,
        /// An earlier good version is still in force.
        serving_last_good: bool,
    },
}

/// The outcome for one object, for status conditions and Events.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The object.
    pub key: ObjectKey,
    /// `metadata.generation` that was looked at.
    pub generation: Option<i64>,
    /// The result.
    pub verdict: Verdict,
    /// The class came from the deprecated `kubernetes.io/ingress.class` annotation.
    pub deprecated_class_annotation: bool,
}

/// Everything the controller watches, as of one moment.
pub struct World<'a> {
    /// Ingresses of every class.
    pub ingresses: &'a [Arc<Ingress>],
    /// IngressClasses.
    pub classes: &'a [IngressClass],
    /// Route resources.
    pub routes: &'a [Arc<RouteResource>],
    /// The ProxyConfig named by `--config-name`, if it exists.
    pub proxy_config: Option<&'a Arc<ProxyConfig>>,
    /// Last good versions the leader stored (see [`Assembler::to_store`]), by
    /// [`ObjectKey::store_key`]: what a controller that has just started serves for an object
    /// that is invalid now but was good before.
    pub stored: &'a BTreeMap<String, String>,
    /// Services, EndpointSlices, Secrets.
    pub objects: &'a Objects,
    /// Where ProxyConfig Secret references without a namespace point.
    pub controller_namespace: &'a str,
}

struct Good {
    /// `metadata.creationTimestamp`: the older object keeps a contested host and path.
    created: Option<k8s_openapi::jiff::Timestamp>,
    translated: Arc<Translated>,
    origin: Object,
}

/// An Ingress or Route as the reflector holds it (shared, not copied): what a change hands
/// the assembler, and what a last good translation came from, so that the leader can store
/// it when the object turns bad.
#[derive(Clone)]
pub enum Object {
    /// An Ingress of any class.
    Ingress(Arc<Ingress>),
    /// A Route.
    Route(Arc<RouteResource>),
}

impl Object {
    fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Ingress(i) => i.meta(),
            Object::Route(r) => r.meta(),
        }
    }
}

impl ObjectKey {
    /// The key of this object's entry in the stored last good versions (a ConfigMap data
    /// key: `ingress.<namespace>.<name>`, `route.<namespace>.<name>`, `proxyconfig.<name>`).
    pub fn store_key(&self) -> String {
        let kind = match self.kind {
            Kind::Ingress => "ingress",
            Kind::Route => "route",
            Kind::ProxyConfig => "proxyconfig",
        };
        if self.namespace.is_empty() {
            format!("{kind}.{}", self.name)
        } else {
            format!("{kind}.{}.{}", self.namespace, self.name)
        }
    }
}

/// An object as stored: what translation reads, without status and managed fields.
fn stored_json<K: serde::Serialize + Resource + Clone>(object: &K, strip: impl FnOnce(&mut K)) -> String {
    let mut o = object.clone();
    o.meta_mut().managed_fields = None;
    o.meta_mut().resource_version = None;
    strip(&mut o);
    serde_json::to_string(&o).unwrap_or_default()
}

/// A stored object, if it parses and is the same object (same uid) as the one in the API now.
fn from_store<K: serde::de::DeserializeOwned + Resource>(text: &str, uid: Option<&str>) -> Option<K> {
    let o: K = serde_json::from_str(text).ok()?;
    (uid.is_some() && o.meta().uid.as_deref() == uid).then_some(o)
}

/// A translation and what it depended on: reused while the object's uid, generation and
/// annotations and every Service, EndpointSlice and Secret it read are unchanged.
struct Memo {
    uid: String,
    generation: Option<i64>,
    annotations: BTreeMap<String, String>,
    reads: Vec<Read>,
    result: Result<Arc<Translated>, Vec<FieldError>>,
}

/// Remembers each object's last good translation between assemblies, and memoizes
/// translations so that an assembly costs little more than the objects that changed.
///
/// Two ways in: [`Assembler::assemble`] looks at every object (at start, and when something
/// every object depends on changed: the IngressClasses, the ProxyConfig, a re-list), and
/// [`Assembler::assemble_changes`] at the objects that changed and those that read a
/// changed Service, EndpointSlice or Secret, settling only the host and path claims they
/// touch. Both leave the same state behind, which the tests hold them to.
#[derive(Default)]
pub struct Assembler {
    last_good: BTreeMap<ObjectKey, Good>,
    last_settings: Option<(Settings, Arc<ProxyConfig>)>,
    memo: HashMap<ObjectKey, Memo>,
    /// Global settings from the environment, applied over the ProxyConfig (validated).
    overrides: EnvOverrides,
    /// The settings without a ProxyConfig: the defaults plus `overrides`.
    base_settings: Settings,
    /// Every object of ours as last seen, with whether its class came from the deprecated
    /// annotation: what a changed Service re-translates its readers from.
    current: HashMap<ObjectKey, (Object, bool)>,
    /// The latest report of every object of ours (shared with the outcome handed to the
    /// status writer: an edit among 10,000 objects copies none of them).
    reports: BTreeMap<ObjectKey, Arc<Report>>,
    /// Who serves which host and path.
    owners: Owners<ObjectKey>,
    /// Which objects read each Service, EndpointSlice and Secret, and what each object read.
    readers: HashMap<ReadKey, HashSet<ObjectKey>>,
    read_by: HashMap<ObjectKey, Vec<ReadKey>>,
    /// The settings of the last full assembly, the ProxyConfig's report and what its
    /// translation read (a change to one of those needs a full assembly).
    settings_now: Option<(Settings, Option<Arc<Report>>, HashSet<ReadKey>)>,
}

impl Assembler {
    /// An assembler whose settings always include `overrides`, the environment's global
    /// settings as [`crate::source::env::env_overrides`] validated them.
    pub fn with_overrides(overrides: EnvOverrides) -> Self {
        let mut errs = Errors::default();
        let base_settings = validate::settings(overrides.settings(), &KeyPath::default(), &mut errs);
        let base_settings = if errs.is_empty() { base_settings } else { Settings::default() };
        Self { overrides, base_settings, ..Self::default() }
    }

    /// Builds the config for `world` and a report per object of ours, looking at every object.
    pub fn assemble(&mut self, world: &World<'_>) -> (Config, Vec<Arc<Report>>) {
        let mut settings_report = Vec::new();
        world.objects.take_reads();
        let settings = self.settings(world, &mut settings_report);
        let settings_reads = world.objects.take_reads().into_iter().map(|r| r.at).collect();
        self.settings_now = Some((settings, settings_report.pop().map(Arc::new), settings_reads));
        let mut seen = HashSet::with_capacity(world.ingresses.len() + world.routes.len());
        let mut changes = Vec::with_capacity(world.ingresses.len() + world.routes.len());
        for ing in world.ingresses {
            let key =
                ObjectKey { kind: Kind::Ingress, namespace: ing.namespace().unwrap_or_default(), name: ing.name_any() };
            if matches!(ingress_class(ing, world.classes), ClassDecision::Ours { .. }) {
                seen.insert(key.clone());
                changes.push((key, Some(Object::Ingress(ing.clone()))));
            }
        }
        for r in world.routes {
            let key = ObjectKey { kind: Kind::Route, namespace: r.namespace().unwrap_or_default(), name: r.name_any() };
            seen.insert(key.clone());
            changes.push((key, Some(Object::Route(r.clone()))));
        }
        // Objects that were deleted or left our class stop serving.
        let gone: Vec<ObjectKey> = self.current.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        changes.extend(gone.into_iter().map(|k| (k, None)));
        self.apply_changes(changes, world);
        self.finish()
    }

    /// Builds the config after `changed` Ingresses and Routes (as they are now; `None`:
    /// deleted) and changes to the Services, EndpointSlices and Secrets `reads`, touching only
    /// the objects concerned. Falls back to [`Self::assemble`] before the first full assembly
    /// and when the ProxyConfig read one of `reads`.
    pub fn assemble_changes(
        &mut self,
        world: &World<'_>,
        changed: Vec<(ObjectKey, Option<Object>)>,
        reads: &[ReadKey],
    ) -> (Config, Vec<Arc<Report>>) {
        let Some((_, _, settings_reads)) = &self.settings_now else { return self.assemble(world) };
        if reads.iter().any(|r| settings_reads.contains(r)) {
            return self.assemble(world);
        }
        let mut keys: HashSet<ObjectKey> = changed.iter().map(|(k, _)| k.clone()).collect();
        let mut changes = changed;
        for r in reads {
            for k in self.readers.get(r).into_iter().flatten() {
                if keys.insert(k.clone()) {
                    if let Some((o, _)) = self.current.get(k) {
                        changes.push((k.clone(), Some(o.clone())));
                    }
                }
            }
        }
        self.apply_changes(changes, world);
        self.finish()
    }

    /// Re-translates (or removes) each object and settles the claims its routes touch.
    fn apply_changes(&mut self, changes: Vec<(ObjectKey, Option<Object>)>, world: &World<'_>) {
        let mut affected = HashSet::new();
        for (key, object) in changes {
            let ours = object.and_then(|o| match &o {
                Object::Ingress(ing) => match ingress_class(ing, world.classes) {
                    ClassDecision::NotOurs => None,
                    ClassDecision::Ours { deprecated_annotation } => Some((o, deprecated_annotation)),
                },
                Object::Route(_) => Some((o, false)),
            });
            let Some((object, deprecated)) = ours else {
                self.current.remove(&key);
                self.last_good.remove(&key);
                self.memo.remove(&key);
                self.reports.remove(&key);
                self.set_reads(&key, Vec::new());
                affected.extend(self.owners.set(&key, None, None));
                continue;
            };
            self.current.insert(key.clone(), (object.clone(), deprecated));
            let result = match &object {
                Object::Ingress(ing) => {
                    self.translate(&key, ing.meta(), world.objects, || translate_ingress(ing, world.objects))
                }
                Object::Route(r) => self.translate(&key, r.meta(), world.objects, || translate_route(r, world.objects)),
            };
            let report = self.record(key.clone(), object, result, deprecated, world);
            self.reports.insert(key.clone(), Arc::new(report));
            let serving = self.last_good.get(&key).map(|g| (g.created, g.translated.clone()));
            affected.extend(match serving {
                Some((created, translated)) => self.owners.set(&key, created, Some(translated)),
                None => self.owners.set(&key, None, None),
            });
        }
        for key in &affected {
            let Some(report) = self.reports.get_mut(key) else { continue };
            if !matches!(report.verdict, Verdict::Accepted { .. }) {
                continue;
            }
            let now: Vec<String> = self
                .owners
                .conflicts(key)
                .iter()
                .map(|(route, owner)| {
                    format!(
                        "route {route} matches the same host and path as {:?} {}/{}, which is older and keeps it",
                        owner.kind, owner.namespace, owner.name
                    )
                })
                .collect();
            if let Verdict::Accepted { conflicts, .. } = &report.verdict {
                if *conflicts == now {
                    continue;
                }
            }
            if let Verdict::Accepted { conflicts, .. } = &mut Arc::make_mut(report).verdict {
                *conflicts = now;
            }
        }
    }

    /// The config and reports of the current state.
    fn finish(&self) -> (Config, Vec<Arc<Report>>) {
        let (settings, settings_report, _) = self.settings_now.as_ref().expect("settings before objects");
        let mut settings = settings.clone();
        let (routes, certificates) = self.owners.serve(self.current.len());
        settings.certificates.extend(certificates);
        let mut reports = Vec::with_capacity(self.reports.len() + 1);
        reports.extend(settings_report.iter().cloned());
        reports.extend(self.reports.values().cloned());
        (Config { settings, routes }, reports)
    }

    /// Records what `key` read, for [`Self::assemble_changes`].
    fn set_reads(&mut self, key: &ObjectKey, reads: Vec<ReadKey>) {
        for r in self.read_by.remove(key).unwrap_or_default() {
            if let Some(set) = self.readers.get_mut(&r) {
                set.remove(key);
                if set.is_empty() {
                    self.readers.remove(&r);
                }
            }
        }
        if reads.is_empty() {
            return;
        }
        for r in &reads {
            self.readers.entry(r.clone()).or_default().insert(key.clone());
        }
        self.read_by.insert(key.clone(), reads);
    }

    fn settings(&mut self, world: &World<'_>, reports: &mut Vec<Report>) -> Settings {
        let Some(pc) = world.proxy_config else {
            self.last_settings = None;
            return self.base_settings.clone();
        };
        let key = ObjectKey { kind: Kind::ProxyConfig, namespace: String::new(), name: pc.name_any() };
        let generation = pc.meta().generation;
        match translate_proxy_config(pc, world.objects, world.controller_namespace, &self.overrides) {
            Ok(s) => {
                self.last_settings = Some((s.clone(), pc.clone()));
                let verdict = Verdict::Accepted { warnings: Vec::new(), conflicts: Vec::new() };
                reports.push(Report { key, generation, verdict, deprecated_class_annotation: false });
                s
            }
            Err(errors) => {
                if self.last_settings.is_none() {
                    self.last_settings = world
                        .stored
                        .get(&key.store_key())
                        .and_then(|text| from_store::<ProxyConfig>(text, pc.meta().uid.as_deref()))
                        .and_then(|stored| {
                            let s = translate_proxy_config(
                                &stored,
                                world.objects,
                                world.controller_namespace,
                                &self.overrides,
                            )
                            .ok()?;
                            tracing::info!(object = %key.store_key(), "serving the stored last good version");
                            Some((s, Arc::new(stored)))
                        });
                }
                let serving_last_good = self.last_settings.is_some();
                let verdict = Verdict::Rejected { errors, serving_last_good };
                reports.push(Report { key, generation, verdict, deprecated_class_annotation: false });
                self.last_settings.as_ref().map_or_else(|| self.base_settings.clone(), |(s, _)| s.clone())
            }
        }
    }

    /// The last good versions to store: every rejected object that still serves one, as JSON
    /// by [`ObjectKey::store_key`]. The leader keeps them in a ConfigMap, so that a restarted
    /// controller, or a replica that starts while an object is bad, serves what the others do
    /// instead of nothing.
    pub fn to_store(&self, reports: &[Arc<Report>]) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for r in reports {
            if !matches!(r.verdict, Verdict::Rejected { serving_last_good: true, .. }) {
                continue;
            }
            let json = match r.key.kind {
                Kind::ProxyConfig => self.last_settings.as_ref().map(|(_, pc)| stored_json(&**pc, |o| o.status = None)),
                Kind::Ingress | Kind::Route => self.last_good.get(&r.key).map(|g| match &g.origin {
                    Object::Ingress(i) => stored_json(&**i, |o| o.status = None),
                    Object::Route(rt) => stored_json(&**rt, |o| o.status = None),
                }),
            };
            if let Some(json) = json {
                out.insert(r.key.store_key(), json);
            }
        }
        out
    }

    /// Restores an object's last good version from the store, if there is one for this very
    /// object (same uid) and it still translates.
    fn recover(&mut self, key: &ObjectKey, uid: Option<&str>, world: &World<'_>) {
        let Some(text) = world.stored.get(&key.store_key()) else { return };
        let origin = match key.kind {
            Kind::Ingress => from_store::<Ingress>(text, uid).map(|o| Object::Ingress(Arc::new(o))),
            Kind::Route => from_store::<RouteResource>(text, uid).map(|o| Object::Route(Arc::new(o))),
            Kind::ProxyConfig => None,
        };
        let Some(origin) = origin else { return };
        let (result, meta) = match &origin {
            Object::Ingress(i) => (translate_ingress(i, world.objects), i.meta()),
            Object::Route(r) => (translate_route(r, world.objects), r.meta()),
        };
        if let Ok(t) = result {
            tracing::info!(object = %key.store_key(), generation = ?meta.generation, "serving the stored last good version");
            let good = Good { created: created(meta), translated: Arc::new(t), origin };
            self.last_good.insert(key.clone(), good);
        }
    }

    /// The memoized translation of an object, or a fresh one. Objects without a uid (built
    /// by hand in tests) are always translated afresh.
    fn translate(
        &mut self,
        key: &ObjectKey,
        meta: &ObjectMeta,
        objects: &Objects,
        translate: impl FnOnce() -> Result<Translated, Vec<FieldError>>,
    ) -> Result<Arc<Translated>, Vec<FieldError>> {
        let empty = BTreeMap::new();
        let annotations = meta.annotations.as_ref().unwrap_or(&empty);
        if let (Some(uid), Some(m)) = (&meta.uid, self.memo.get(key)) {
            if &m.uid == uid
                && m.generation == meta.generation
                && &m.annotations == annotations
                && objects.unchanged(&m.reads)
            {
                return m.result.clone();
            }
        }
        objects.take_reads();
        let result = translate().map(Arc::new);
        let reads = objects.take_reads();
        self.set_reads(key, reads.iter().map(|r| r.at.clone()).collect());
        if let Some(uid) = &meta.uid {
            let memo = Memo {
                uid: uid.clone(),
                generation: meta.generation,
                annotations: annotations.clone(),
                reads,
                result: result.clone(),
            };
            self.memo.insert(key.clone(), memo);
        }
        result
    }

    fn record(
        &mut self,
        key: ObjectKey,
        origin: Object,
        result: Result<Arc<Translated>, Vec<FieldError>>,
        deprecated_class_annotation: bool,
        world: &World<'_>,
    ) -> Report {
        let meta = origin.meta();
        let generation = meta.generation;
        let verdict = match result {
            Ok(t) => {
                let warnings = t.warnings.clone();
                self.last_good.insert(key.clone(), Good { created: created(meta), translated: t, origin });
                Verdict::Accepted { warnings, conflicts: Vec::new() }
            }
            Err(errors) => {
                if !self.last_good.contains_key(&key) {
                    let uid = meta.uid.clone();
                    self.recover(&key, uid.as_deref(), world);
                }
                Verdict::Rejected { errors, serving_last_good: self.last_good.contains_key(&key) }
            }
        };
        Report { key, generation, verdict, deprecated_class_annotation }
    }
}

fn created(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<k8s_openapi::jiff::Timestamp> {
    meta.creation_timestamp.as_ref().map(|t| t.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::test_support::*;
    use crate::k8s::translate::CONTROLLER_NAME;
    use k8s_openapi::api::networking::v1::IngressClassSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn our_class() -> IngressClass {
        IngressClass {
            metadata: ObjectMeta { name: Some("portcullis".into()), ..Default::default() },
            spec: Some(IngressClassSpec { controller: Some(CONTROLLER_NAME.into()), parameters: None }),
        }
    }

    fn named_ingress(name: &str, created_secs: i64, annotations: &[(&str, &str)], path: &str) -> Ingress {
        let mut ing = ingress(annotations, &[("a.test", path, "Prefix", backend("app", num(80)))]);
        ing.metadata.name = Some(name.into());
        ing.metadata.generation = Some(1);
        ing.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::from_second(created_secs).unwrap()));
        ing.spec.as_mut().unwrap().ingress_class_name = Some("portcullis".into());
        ing
    }

    fn run(a: &mut Assembler, ingresses: &[Ingress]) -> (Config, Vec<Arc<Report>>) {
        run_with(a, ingresses, &objects())
    }

    fn run_with(a: &mut Assembler, ingresses: &[Ingress], objects: &Objects) -> (Config, Vec<Arc<Report>>) {
        run_stored(a, ingresses, objects, &BTreeMap::new())
    }

    fn run_stored(
        a: &mut Assembler,
        ingresses: &[Ingress],
        objects: &Objects,
        stored: &BTreeMap<String, String>,
    ) -> (Config, Vec<Arc<Report>>) {
        let classes = [our_class()];
        let ingresses: Vec<Arc<Ingress>> = ingresses.iter().cloned().map(Arc::new).collect();
        a.assemble(&World {
            ingresses: &ingresses,
            classes: &classes,
            routes: &[],
            proxy_config: None,
            stored,
            objects,
            controller_namespace: "portcullis",
        })
    }

    #[test]
    fn a_bad_edit_keeps_the_last_good_version_and_touches_no_other_object() {
        let mut a = Assembler::default();
        let good = named_ingress("one", 1, &[("portcullis.io/timeout", "5s")], "/one");
        let other = named_ingress("two", 2, &[], "/two");
        let (config, _) = run(&mut a, &[good.clone(), other.clone()]);
        assert_eq!(config.routes.len(), 2);
        let mut bad = good.clone();
        bad.metadata.annotations = Some([("portcullis.io/timeout".to_owned(), "soon".to_owned())].into());
        bad.metadata.generation = Some(2);
        let (config, reports) = run(&mut a, &[bad, other]);
        assert_eq!(config.routes.len(), 2, "both still serve");
        let r1 = config.routes.iter().find(|r| r.name.contains("/one")).unwrap();
        assert_eq!(r1.timeout, Some(Some(std::time::Duration::from_secs(5))), "the last good version");
        let rep = reports.iter().find(|r| r.key.name == "one").unwrap();
        assert_eq!(rep.generation, Some(2));
        assert!(
            matches!(&rep.verdict, Verdict::Rejected { serving_last_good: true, errors } if errors[0].path.contains("portcullis.io/timeout"))
        );
        assert!(matches!(&reports.iter().find(|r| r.key.name == "two").unwrap().verdict, Verdict::Accepted { .. }));
    }

    #[test]
    fn environment_overrides_apply_without_a_proxy_config() {
        let overrides = crate::source::env::env_overrides(&|k| (k == "ADMIN_ADDRESS").then(|| ":9901".into())).unwrap();
        let mut a = Assembler::with_overrides(overrides);
        let (config, _) = run(&mut a, &[]);
        assert_eq!(config.settings.admin_address.map(|a| a.port()), Some(9901));
        assert!(config.settings.admin_address.is_some_and(|a| a.ip().is_unspecified()), "not the 127.0.0.1 default");
    }

    #[test]
    fn leaving_our_class_or_being_deleted_removes_the_routes() {
        let mut a = Assembler::default();
        let ing = named_ingress("one", 1, &[], "/one");
        assert_eq!(run(&mut a, std::slice::from_ref(&ing)).0.routes.len(), 1);
        let mut moved = ing.clone();
        moved.spec.as_mut().unwrap().ingress_class_name = Some("nginx".into());
        let (config, reports) = run(&mut a, &[moved]);
        assert!(
            config.routes.is_empty() && reports.is_empty(),
            "another class's Ingress is neither served nor reported"
        );
        assert_eq!(run(&mut a, std::slice::from_ref(&ing)).0.routes.len(), 1);
        assert!(run(&mut a, &[]).0.routes.is_empty());
    }

    #[test]
    fn the_older_object_keeps_a_contested_host_and_path() {
        let mut a = Assembler::default();
        let old = named_ingress("old", 10, &[], "/same");
        let new = named_ingress("new", 20, &[], "/same");
        let (config, reports) = run(&mut a, &[new, old]);
        assert_eq!(config.routes.len(), 1);
        assert!(config.routes[0].name.starts_with("web/old:"));
        let rep = reports.iter().find(|r| r.key.name == "new").unwrap();
        assert!(
            matches!(&rep.verdict, Verdict::Accepted { conflicts, .. } if conflicts[0].contains("Ingress web/old"))
        );
    }

    #[test]
    fn a_rejected_new_object_serves_nothing() {
        let mut a = Assembler::default();
        let bad = named_ingress("bad", 1, &[("portcullis.io/nope", "x")], "/x");
        let (config, reports) = run(&mut a, &[bad]);
        assert!(config.routes.is_empty());
        assert!(matches!(&reports[0].verdict, Verdict::Rejected { serving_last_good: false, .. }));
    }

    #[test]
    fn a_translation_is_reused_until_its_object_or_something_it_read_changes() {
        let mut a = Assembler::default();
        let mut ing = named_ingress("one", 1, &[], "/one");
        ing.metadata.uid = Some("uid-1".into());
        let mut o = objects();
        let upstreams_now = |a: &mut Assembler, ing: &Ingress, o: &Objects| {
            let (config, _) = run_with(a, std::slice::from_ref(ing), o);
            (upstreams(&config.routes[0]), config.routes[0].timeout)
        };
        assert_eq!(upstreams_now(&mut a, &ing, &o).0, vec!["Http://10.244.1.7:8080"]);

        // The ready endpoint goes away but the slice's resourceVersion says nothing changed:
        // the memoized translation is used (what proves that no re-translation happened).
        let slice = &mut o.slices.get_mut(&("web".into(), "app".into())).unwrap()[0];
        Arc::make_mut(slice).endpoints.as_mut().unwrap().retain(|e| e.addresses[0] != "10.244.1.7");
        assert_eq!(upstreams_now(&mut a, &ing, &o).0, vec!["Http://10.244.1.7:8080"], "memoized");
        // A new resourceVersion, as the API server gives every change, is picked up.
        Arc::make_mut(&mut o.slices.get_mut(&("web".into(), "app".into())).unwrap()[0]).metadata.resource_version =
            Some("2".into());
        assert_eq!(upstreams_now(&mut a, &ing, &o).0, vec!["Http://10.244.1.8:8080"], "the slice changed");

        // Annotations change without a new generation; they are part of the key too.
        ing.metadata.annotations = Some([("portcullis.io/timeout".to_owned(), "3s".to_owned())].into());
        assert_eq!(upstreams_now(&mut a, &ing, &o).1, Some(Some(std::time::Duration::from_secs(3))));
        // A Service that was missing and appears is a change of what was read.
        let mut missing = named_ingress("two", 2, &[], "/two");
        missing.metadata.uid = Some("uid-2".into());
        missing.spec.as_mut().unwrap().rules.as_mut().unwrap()[0].http.as_mut().unwrap().paths[0].backend =
            backend("later", num(80));
        let (config, _) = run_with(&mut a, std::slice::from_ref(&missing), &o);
        assert!(config.routes.is_empty());
        let mut svc = (*o.services[&("web".to_owned(), "app".to_owned())]).clone();
        svc.metadata.name = Some("later".into());
        o.services.insert(("web".into(), "later".into()), svc.into());
        let (config, _) = run_with(&mut a, std::slice::from_ref(&missing), &o);
        assert_eq!(config.routes.len(), 1, "the Service appeared");
    }

    #[test]
    fn a_restarted_controller_serves_the_stored_last_good_version_of_the_same_object() {
        let mut good = named_ingress("one", 1, &[("portcullis.io/timeout", "5s")], "/one");
        good.metadata.uid = Some("uid-1".into());
        good.metadata.managed_fields =
            Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry::default()]);
        let mut bad = good.clone();
        bad.metadata.annotations = Some([("portcullis.io/timeout".to_owned(), "soon".to_owned())].into());
        bad.metadata.generation = Some(2);

        let mut first = Assembler::default();
        run(&mut first, std::slice::from_ref(&good));
        let (_, reports) = run(&mut first, std::slice::from_ref(&bad));
        let stored = first.to_store(&reports);
        assert_eq!(stored.keys().collect::<Vec<_>>(), ["ingress.web.one"]);
        assert!(stored["ingress.web.one"].contains("\"5s\""), "the good version is stored");
        assert!(!stored["ingress.web.one"].contains("managedFields"), "without managed fields");

        // A new process knows nothing but the store, and serves what the first one served.
        let mut restarted = Assembler::default();
        let (config, reports) = run_stored(&mut restarted, std::slice::from_ref(&bad), &objects(), &stored);
        assert_eq!(config.routes.len(), 1);
        assert_eq!(config.routes[0].timeout, Some(Some(std::time::Duration::from_secs(5))));
        assert!(matches!(&reports[0].verdict, Verdict::Rejected { serving_last_good: true, .. }));
        assert_eq!(restarted.to_store(&reports), stored, "and keeps it stored");

        // An object deleted and created again under the same name is another object.
        let mut recreated = bad.clone();
        recreated.metadata.uid = Some("uid-2".into());
        let (config, reports) = run_stored(&mut Assembler::default(), &[recreated], &objects(), &stored);
        assert!(config.routes.is_empty());
        assert!(matches!(&reports[0].verdict, Verdict::Rejected { serving_last_good: false, .. }));

        // Once the object is good again nothing needs storing.
        let (_, reports) = run(&mut restarted, std::slice::from_ref(&good));
        assert!(restarted.to_store(&reports).is_empty());
    }
    #[test]
    fn assembling_the_changes_ends_where_assembling_everything_does() {
        // A small cluster edited at random, with contested hosts and paths, bad edits,
        // deletions, a Service that comes and goes and endpoints that move: after every step
        // the config and reports of the assembler that looks at the changes only are those of
        // one that looks at everything.
        let classes = [our_class()];
        let mut o = objects();
        let mut ingresses: BTreeMap<String, Ingress> = BTreeMap::new();
        let mut incremental = Assembler::default();
        let mut full = Assembler::default();
        let mut seed = 7u64;
        let mut version = 100;
        let (mut contested, mut rejected) = (0, 0);
        let shown = |c: &Config| c.routes.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>();
        for step in 0..600 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let r = usize::try_from(seed >> 33).unwrap();
            version += 1;
            let name = format!("i{}", r % 6);
            let key = ObjectKey { kind: Kind::Ingress, namespace: "web".into(), name: name.clone() };
            let mut changed = Vec::new();
            let mut reads = Vec::new();
            match (r >> 8) % 6 {
                0 => {
                    ingresses.remove(&name);
                    changed.push((key, None));
                }
                1..=3 => {
                    let created = i64::try_from((r >> 16) % 3).unwrap();
                    let bad = (r >> 18) % 5 == 0;
                    let timeout = if bad { "soon" } else { "5s" };
                    let path = ["/a", "/b", "/c"][(r >> 12) % 3];
                    let mut ing = named_ingress(&name, created, &[("portcullis.io/timeout", timeout)], path);
                    ing.metadata.uid = Some(format!("uid-{name}-{created}"));
                    ing.metadata.generation = Some(version);
                    if (r >> 14) % 3 == 0 {
                        ing.spec.as_mut().unwrap().rules.as_mut().unwrap()[0].http.as_mut().unwrap().paths[0].backend =
                            backend("later", num(80));
                    }
                    if (r >> 20) % 7 == 0 {
                        ing.spec.as_mut().unwrap().ingress_class_name = Some("nginx".into());
                    }
                    ingresses.insert(name, ing.clone());
                    changed.push((key, Some(Object::Ingress(Arc::new(ing)))));
                }
                4 => {
                    let k = ("web".to_owned(), "later".to_owned());
                    let svc = if o.services.contains_key(&k) {
                        None
                    } else {
                        let mut svc = (*o.services[&("web".to_owned(), "app".to_owned())]).clone();
                        svc.metadata.name = Some("later".into());
                        svc.metadata.resource_version = Some(version.to_string());
                        Some(Arc::new(svc))
                    };
                    reads.push(o.set_service(k, svc));
                }
                _ => {
                    let mut slice = (*o.slices[&("web".to_owned(), "app".to_owned())][0]).clone();
                    slice.metadata.resource_version = Some(version.to_string());
                    // The ready endpoint moves to another address.
                    slice.endpoints.as_mut().unwrap().swap(0, 1);
                    reads.extend(o.set_slice(&("web".to_owned(), "app-abc".to_owned()), Some(Arc::new(slice))));
                }
            }
            let all: Vec<Arc<Ingress>> = ingresses.values().cloned().map(Arc::new).collect();
            let stored = BTreeMap::new();
            let world = World {
                ingresses: &all,
                classes: &classes,
                routes: &[],
                proxy_config: None,
                stored: &stored,
                objects: &o,
                controller_namespace: "portcullis",
            };
            let (got, got_reports) = incremental.assemble_changes(&world, changed, &reads);
            let (want, want_reports) = full.assemble(&world);
            assert_eq!(shown(&got), shown(&want), "routes after step {step}");
            assert_eq!(got_reports, want_reports, "reports after step {step}");
            contested += usize::from(
                got_reports
                    .iter()
                    .any(|r| matches!(&r.verdict, Verdict::Accepted { conflicts, .. } if !conflicts.is_empty())),
            );
            rejected += usize::from(got_reports.iter().any(|r| matches!(r.verdict, Verdict::Rejected { .. })));
        }
        assert!(contested > 100 && rejected > 100, "the steps conflict and fail often: {contested}, {rejected}");
    }
}
