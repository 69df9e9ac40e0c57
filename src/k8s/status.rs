//! Writes what the controller concluded back to the API: status conditions on Routes and the
//! ProxyConfig, `status.loadBalancer` on Ingresses, and Warning Events for bad input. Only
//! the leader calls this; every replica serves traffic.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource};
use serde_json::json;

use super::assemble::{Kind, ObjectKey, Report, Verdict};
use super::crd::{ProxyConfig, Route};

/// Field manager name for status patches.
const MANAGER: &str = "portcullis-controller";
/// What fits in a ConfigMap (1 MiB), with room for metadata.
const STORE_LIMIT: usize = 1_000_000;

/// What was written for one object: compared structurally, it is cheap enough to check a
/// thousand objects after every assembly.
#[derive(PartialEq)]
struct Written {
    generation: Option<i64>,
    verdict: Verdict,
    addresses: Vec<IngressLoadBalancerIngress>,
}

/// Remembers what was last written so that an unchanged verdict causes no API call.
pub struct StatusWriter {
    client: Client,
    reporter: kube::runtime::events::Reporter,
    written: HashMap<ObjectKey, Written>,
}

impl StatusWriter {
    /// A writer that reports Events as `portcullis` / `identity`.
    pub fn new(client: Client, identity: &str) -> Self {
        let reporter =
            kube::runtime::events::Reporter { controller: "portcullis".into(), instance: Some(identity.into()) };
        Self { reporter, client, written: HashMap::new() }
    }

    /// Forgets what was written, so that a new leader writes everything once.
    pub fn reset(&mut self) {
        self.written.clear();
    }

    /// Writes status and Events for every report that changed. `addresses` is what Ingress
    /// `status.loadBalancer` should say (from `--publish-service` or `--publish-address`).
    /// Returns whether every write succeeded (the caller retries the others later).
    pub async fn write(
        &mut self,
        reports: &[Arc<Report>],
        ingresses: &[Arc<Ingress>],
        addresses: &[IngressLoadBalancerIngress],
    ) -> bool {
        let mut all_ok = true;
        for report in reports {
            let is_current = self.written.get(&report.key).is_some_and(|w| {
                w.generation == report.generation && w.verdict == report.verdict && w.addresses == addresses
            });
            if is_current {
                continue;
            }
            match self.write_one(report, ingresses, addresses).await {
                Ok(()) => {
                    let written = Written {
                        generation: report.generation,
                        verdict: report.verdict.clone(),
                        addresses: addresses.to_vec(),
                    };
                    self.written.insert(report.key.clone(), written);
                }
                Err(e) => {
                    tracing::warn!(object = ?report.key, error = %e, "writing status failed; will retry");
                    all_ok = false;
                }
            }
        }
        let current: std::collections::HashSet<&ObjectKey> = reports.iter().map(|r| &r.key).collect();
        self.written.retain(|k, _| current.contains(k));
        all_ok
    }

    /// Makes the last good versions ConfigMap hold exactly `data` (server-side apply, so
    /// entries no longer wanted disappear). Entries beyond ConfigMap's 1 MiB limit are left
    /// out, largest first, with an error in the log: those objects would serve nothing after
    /// a restart, as without the store.
    pub async fn store_last_good(&self, namespace: &str, name: &str, data: &BTreeMap<String, String>) -> bool {
        let mut data = data.clone();
        let mut total: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
        while total > STORE_LIMIT {
            let Some(largest) = data.iter().max_by_key(|(_, v)| v.len()).map(|(k, _)| k.clone()) else { break };
            let v = data.remove(&largest).unwrap_or_default();
            total -= largest.len() + v.len();
            tracing::error!(object = %largest, bytes = v.len(), "last good version too large to store in ConfigMap {namespace}/{name}");
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let body = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "portcullis"}},
            "data": data,
        });
        let result = api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(body)).await;
        if let Err(e) = result {
            let what = format!("storing the last good versions in ConfigMap {namespace}/{name} failed");
            tracing::warn!(error = %e, "{what}; will retry");
            false
        } else {
            tracing::debug!(entries = data.len(), "stored the last good versions");
            true
        }
    }

    async fn write_one(
        &self,
        report: &Report,
        ingresses: &[Arc<Ingress>],
        addresses: &[IngressLoadBalancerIngress],
    ) -> Result<(), kube::Error> {
        let key = &report.key;
        let conditions = conditions(report);
        let status = json!({ "status": { "observedGeneration": report.generation, "conditions": conditions } });
        let params = PatchParams::apply(MANAGER).force();
        let reference = match key.kind {
            Kind::Route => {
                let api: Api<Route> = Api::namespaced(self.client.clone(), &key.namespace);
                let body =
                    json!({ "apiVersion": "portcullis.io/v1alpha1", "kind": "Route", "status": status["status"] });
                let r = api.patch_status(&key.name, &params, &Patch::Apply(body)).await?;
                r.object_ref(&())
            }
            Kind::ProxyConfig => {
                let api: Api<ProxyConfig> = Api::all(self.client.clone());
                let errors: Vec<String> = match &report.verdict {
                    Verdict::Rejected { errors, .. } => errors.iter().map(ToString::to_string).collect(),
                    Verdict::Accepted { .. } => Vec::new(),
                };
                let body = json!({
                    "apiVersion": "portcullis.io/v1alpha1", "kind": "ProxyConfig",
                    "status": { "observedGeneration": report.generation, "conditions": conditions, "errors": errors },
                });
                let r = api.patch_status(&key.name, &params, &Patch::Apply(body)).await?;
                r.object_ref(&())
            }
            Kind::Ingress => {
                let Some(ing) = ingresses.iter().find(|i| {
                    i.metadata.namespace.as_deref() == Some(&key.namespace)
                        && i.metadata.name.as_deref() == Some(&key.name)
                }) else {
                    return Ok(());
                };
                let serving = !matches!(report.verdict, Verdict::Rejected { serving_last_good: false, .. });
                let lb = if serving { addresses.to_vec() } else { Vec::new() };
                let current = ing
                    .status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|l| l.ingress.clone())
                    .unwrap_or_default();
                if current != lb {
                    let api: Api<Ingress> = Api::namespaced(self.client.clone(), &key.namespace);
                    let status = IngressStatus { load_balancer: Some(IngressLoadBalancerStatus { ingress: Some(lb) }) };
                    api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
                        .await?;
                }
                ing.object_ref(&())
            }
        };
        // A fresh Recorder per object and verdict: kube's Recorder treats an Event with the same
        // type, reason, action and object as a repeat and re-sends its *first* note, so a
        // changed error ("Secret not found", then "Secret has type Opaque") would keep the
        // stale message. Verdicts are only written when they change, so nothing repeats.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        for (reason, note) in events(report) {
            let ev = Event {
                type_: EventType::Warning,
                reason: reason.into(),
                note: Some(truncate(&note, NOTE_MAX)),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::warn!(object = ?key, error = %e, "publishing an Event failed");
            }
        }
        Ok(())
    }
}

/// The longest Event note the API server takes is 1 kB.
const NOTE_MAX: usize = 1000;

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Warning Events for a report: one per problem kind, with every message.
fn events(report: &Report) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if report.deprecated_class_annotation {
        out.push((
            "DeprecatedAnnotation",
            "kubernetes.io/ingress.class is deprecated; use spec.ingressClassName".to_owned(),
        ));
    }
    match &report.verdict {
        Verdict::Rejected { errors, serving_last_good } => {
            let tail = if *serving_last_good {
                " The last good version keeps serving."
            } else {
                " Nothing is served for this object."
            };
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            // Long errors (the unknown-annotation one lists every annotation) are cut, never
            // what happens next.
            let room = NOTE_MAX - tail.len() - ".".len() - "…".len();
            out.push(("InvalidConfig", format!("{}.{tail}", truncate(&list.join("; "), room))));
        }
        Verdict::Accepted { warnings, conflicts } => {
            if !warnings.is_empty() {
                out.push(("Unsupported", warnings.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")));
            }
            if !conflicts.is_empty() {
                out.push(("Conflict", conflicts.join("; ")));
            }
        }
    }
    out
}

/// `Accepted`, `ResolvedRefs` and `Programmed`, with reasons a person can act on.
pub fn conditions(report: &Report) -> Vec<Condition> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let gen = report.generation;
    let cond = |type_: &str, ok: bool, reason: &str, message: String| Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: truncate(&message, 32_000),
        observed_generation: gen,
        last_transition_time: now.clone(),
    };
    match &report.verdict {
        Verdict::Accepted { conflicts, .. } => vec![
            cond(
                "Accepted",
                conflicts.is_empty(),
                if conflicts.is_empty() { "Accepted" } else { "Conflicted" },
                conflicts.join("; "),
            ),
            cond("ResolvedRefs", true, "ResolvedRefs", "every referenced Service and Secret was found".into()),
            cond("Programmed", true, "Programmed", "serving this generation".into()),
        ],
        Verdict::Rejected { errors, serving_last_good } => {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            let refs_bad =
                text.iter().any(|e| e.contains(" not found") || e.contains("has type") || e.contains(" has no "));
            vec![
                cond("Accepted", false, "Invalid", text.join("; ")),
                cond(
                    "ResolvedRefs",
                    !refs_bad,
                    if refs_bad { "RefNotFound" } else { "ResolvedRefs" },
                    if refs_bad {
                        "a referenced Service or Secret is missing or unusable".into()
                    } else {
                        String::new()
                    },
                ),
                cond(
                    "Programmed",
                    *serving_last_good,
                    if *serving_last_good { "LastGoodServing" } else { "Invalid" },
                    if *serving_last_good {
                        "this generation was rejected; the last good generation keeps serving".into()
                    } else {
                        "nothing is served for this object".into()
                    },
                ),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FieldError;

    #[test]
    fn conditions_say_what_to_do() {
        let report = Report {
            key: ObjectKey { kind: Kind::Route, namespace: "web".into(), name: "api".into() },
            generation: Some(3),
            verdict: Verdict::Rejected {
                errors: vec![FieldError { path: "spec.to[0]".into(), message: "Service web/missing not found".into() }],
                serving_last_good: true,
            },
            deprecated_class_annotation: false,
        };
        let c = conditions(&report);
        assert_eq!((c[0].type_.as_str(), c[0].status.as_str(), c[0].reason.as_str()), ("Accepted", "False", "Invalid"));
        assert!(c[0].message.contains("spec.to[0]: Service web/missing not found"));
        assert_eq!((c[1].status.as_str(), c[1].reason.as_str()), ("False", "RefNotFound"));
        assert_eq!((c[2].status.as_str(), c[2].reason.as_str()), ("True", "LastGoodServing"));
        assert!(c.iter().all(|c| c.observed_generation == Some(3)));
        assert_eq!(events(&report)[0].0, "InvalidConfig");
        assert!(events(&report)[0].1.ends_with("The last good version keeps serving."));
        let long = Report {
            verdict: Verdict::Rejected {
                errors: vec![FieldError {
                    path: "metadata.annotations[\"portcullis.io/bogus\"]".into(),
                    message: "x".repeat(2000),
                }],
                serving_last_good: true,
            },
            ..report
        };
        let note = &events(&long)[0].1;
        assert!(note.len() <= NOTE_MAX && note.ends_with("…. The last good version keeps serving."), "{note}");
    }
}
