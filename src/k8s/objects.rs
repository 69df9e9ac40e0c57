//! The objects a translation reads besides the one it translates (Services, EndpointSlices,
//! Secrets), with every read recorded so that the assembler knows when a translation is
//! stale, and the lookups translations share: a Secret's PEM, a TLS Secret as a
//! certificate, the endpoints behind a Service port.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use crate::config::input::{Pem, UpstreamInput};
use crate::config::Certificate;
use crate::pki::build_certificate;

/// The objects a translation may look at, keyed by (namespace, name). EndpointSlices are
/// keyed by the Service they belong to (their `kubernetes.io/service-name` label).
///
/// Translations read them only through [`Objects::service`], [`Objects::slices_of`] and
/// [`Objects::secret`], which record what was read and at which `resourceVersion`: the
/// assembler keeps a translation until its object or one of those reads changes, so an edit
/// in a cluster of a thousand Ingresses re-translates one object, not a thousand.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    /// Services.
    pub services: BTreeMap<(String, String), Arc<Service>>,
    /// EndpointSlices by owning Service.
    pub slices: BTreeMap<(String, String), Vec<Arc<EndpointSlice>>>,
    /// Secrets.
    pub secrets: BTreeMap<(String, String), Arc<Secret>>,
    /// The Service each EndpointSlice (namespace, name) was filed under, so that a changed or
    /// deleted slice leaves the list it was in.
    slice_owner: BTreeMap<(String, String), (String, String)>,
    reads: RefCell<Vec<Read>>,
}

/// Which map a [`Read`] looked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReadKind {
    /// A Service, by (namespace, name).
    Service,
    /// The EndpointSlices of a Service, by the Service's (namespace, name).
    Slices,
    /// A Secret, by (namespace, name).
    Secret,
}

/// What a translation looked up: the controller names the same keys for the objects that
/// changed, and the assembler re-translates exactly the objects that read one of them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReadKey {
    /// The map.
    pub kind: ReadKind,
    /// (namespace, name) in it.
    pub key: (String, String),
}

/// One lookup a translation made and the version it saw (`-` when the object was missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// What was looked up.
    pub at: ReadKey,
    version: String,
}

fn version_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.resource_version.as_deref().unwrap_or("")
}

impl Objects {
    /// Adds an EndpointSlice under the Service named by its label.
    pub fn add_slice(&mut self, slice: impl Into<Arc<EndpointSlice>>) {
        let slice = slice.into();
        let ns = slice.namespace().unwrap_or_default();
        if let Some(svc) = slice.labels().get("kubernetes.io/service-name").cloned() {
            let owner = (ns, svc);
            self.slice_owner.insert((owner.0.clone(), slice.name_any()), owner.clone());
            self.slices.entry(owner).or_default().push(slice);
        }
    }

    /// Puts the EndpointSlice `key` (namespace, name) in its current state (`None`: deleted)
    /// and returns the Services whose slices changed: the one it was under, and the one it is
    /// under now.
    pub fn set_slice(&mut self, key: &(String, String), slice: Option<Arc<EndpointSlice>>) -> Vec<ReadKey> {
        let mut changed = Vec::new();
        if let Some(owner) = self.slice_owner.remove(key) {
            if let Some(list) = self.slices.get_mut(&owner) {
                list.retain(|s| s.name_any() != key.1);
                if list.is_empty() {
                    self.slices.remove(&owner);
                }
            }
            changed.push(ReadKey { kind: ReadKind::Slices, key: owner });
        }
        if let Some(slice) = slice {
            self.add_slice(slice);
            if let Some(owner) = self.slice_owner.get(key) {
                changed.push(ReadKey { kind: ReadKind::Slices, key: owner.clone() });
            }
        }
        changed.dedup();
        changed
    }

    /// Puts the Service `key` in its current state (`None`: deleted).
    pub fn set_service(&mut self, key: (String, String), service: Option<Arc<Service>>) -> ReadKey {
        match service {
            Some(s) => self.services.insert(key.clone(), s),
            None => self.services.remove(&key),
        };
        ReadKey { kind: ReadKind::Service, key }
    }

    /// Puts the Secret `key` in its current state (`None`: deleted).
    pub fn set_secret(&mut self, key: (String, String), secret: Option<Arc<Secret>>) -> ReadKey {
        match secret {
            Some(s) => self.secrets.insert(key.clone(), s),
            None => self.secrets.remove(&key),
        };
        ReadKey { kind: ReadKind::Secret, key }
    }

    /// A Service, recording the read.
    pub fn service(&self, key: &(String, String)) -> Option<&Service> {
        self.record(ReadKind::Service, key);
        self.services.get(key).map(AsRef::as_ref)
    }

    /// The EndpointSlices of a Service, recording the read.
    pub fn slices_of(&self, key: &(String, String)) -> impl Iterator<Item = &EndpointSlice> {
        self.record(ReadKind::Slices, key);
        self.slices.get(key).into_iter().flatten().map(AsRef::as_ref)
    }

    /// A Secret, recording the read.
    pub fn secret(&self, key: &(String, String)) -> Option<&Secret> {
        self.record(ReadKind::Secret, key);
        self.secrets.get(key).map(AsRef::as_ref)
    }

    fn record(&self, kind: ReadKind, key: &(String, String)) {
        let version = self.version(kind, key);
        self.reads.borrow_mut().push(Read { at: ReadKey { kind, key: key.clone() }, version });
    }

    fn version(&self, kind: ReadKind, key: &(String, String)) -> String {
        match kind {
            ReadKind::Service => {
                self.services.get(key).map_or_else(|| "-".to_owned(), |s| version_of(&s.metadata).to_owned())
            }
            ReadKind::Secret => {
                self.secrets.get(key).map_or_else(|| "-".to_owned(), |s| version_of(&s.metadata).to_owned())
            }
            ReadKind::Slices => self.slices.get(key).map_or_else(
                || "-".to_owned(),
                |v| v.iter().map(|s| version_of(&s.metadata)).collect::<Vec<_>>().join(","),
            ),
        }
    }

    /// Hands over (and forgets) the reads recorded since the last call.
    pub fn take_reads(&self) -> Vec<Read> {
        std::mem::take(&mut *self.reads.borrow_mut())
    }

    /// Whether every read would see the same version now. Called for every object in every
    /// assembly, so it compares in place rather than building the version strings.
    pub fn unchanged(&self, reads: &[Read]) -> bool {
        reads.iter().all(|r| self.sees(r))
    }

    fn sees(&self, r: &Read) -> bool {
        let one = |meta: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>| {
            meta.map_or("-", version_of) == r.version
        };
        match r.at.kind {
            ReadKind::Service => one(self.services.get(&r.at.key).map(|s| &s.metadata)),
            ReadKind::Secret => one(self.secrets.get(&r.at.key).map(|s| &s.metadata)),
            ReadKind::Slices => match self.slices.get(&r.at.key) {
                None => r.version == "-",
                Some(v) if v.is_empty() => r.version.is_empty(),
                Some(v) => {
                    let mut seen = r.version.split(',');
                    v.iter().all(|s| seen.next() == Some(version_of(&s.metadata))) && seen.next().is_none()
                }
            },
        }
    }
}

fn secret_text(ns: &str, name: &str, key: &str, objects: &Objects) -> Result<String, String> {
    let secret =
        objects.secret(&(ns.to_owned(), name.to_owned())).ok_or_else(|| format!("Secret {ns}/{name} not found"))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| format!("Secret {ns}/{name} has no {key:?} key"))?;
    String::from_utf8(bytes.0.clone()).map_err(|_| format!("Secret {ns}/{name} key {key:?} is not PEM text"))
}

/// One key of a Secret as it is, for a secret setting (a client secret, a key). The errors
/// name the Secret and the key, never the value.
pub(crate) fn secret_value(ns: &str, name: &str, key: &str, objects: &Objects) -> Result<Pem, String> {
    let secret =
        objects.secret(&(ns.to_owned(), name.to_owned())).ok_or_else(|| format!("Secret {ns}/{name} not found"))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| format!("Secret {ns}/{name} has no {key:?} key"))?;
    Ok(Pem { source: format!("secret {ns}/{name} {key}"), bytes: bytes.0.clone() })
}

/// One key of a Secret as PEM for the validator.
pub(crate) fn secret_pem(ns: &str, name: &str, key: &str, objects: &Objects) -> Result<Pem, String> {
    let text = secret_text(ns, name, key, objects)?;
    Ok(Pem { source: format!("secret {ns}/{name} {key}"), bytes: text.into_bytes() })
}

/// A `kubernetes.io/tls` Secret as a certificate.
pub fn tls_certificate(ns: &str, name: &str, objects: &Objects) -> Result<Certificate, String> {
    let secret =
        objects.secret(&(ns.to_owned(), name.to_owned())).ok_or_else(|| format!("Secret {ns}/{name} not found"))?;
    if secret.type_.as_deref() != Some("kubernetes.io/tls") {
        return Err(format!(
            "Secret {ns}/{name} has type {:?}; a kubernetes.io/tls Secret is required",
            secret.type_.as_deref().unwrap_or("Opaque")
        ));
    }
    let cert = secret_text(ns, name, "tls.crt", objects)?;
    let key = secret_text(ns, name, "tls.key", objects)?;
    build_certificate(cert.as_bytes(), key.as_bytes(), &format!("secret {ns}/{name}"))
        .map_err(|e| format!("Secret {ns}/{name}: {e}"))
}

/// The port of a Service that `wanted` picks. A tunnel prefers the port of its own protocol,
/// since a DNS Service commonly has port 53 twice (TCP and UDP); otherwise the first match
/// (the caller warns when its protocol differs).
pub(crate) fn service_port(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    protocol: Option<crate::config::TunnelProtocol>,
    wanted: impl Fn(&k8s_openapi::api::core::v1::ServicePort) -> bool,
) -> Option<&k8s_openapi::api::core::v1::ServicePort> {
    let ports = spec.ports.as_deref().unwrap_or_default();
    let same_protocol = |p: &k8s_openapi::api::core::v1::ServicePort| {
        protocol.is_none_or(|t| p.protocol.as_deref().unwrap_or("TCP").eq_ignore_ascii_case(t.name()))
    };
    ports.iter().find(|p| wanted(p) && same_protocol(p)).or_else(|| ports.iter().find(|p| wanted(p)))
}

/// `scheme://ip:port` with `weight` for the endpoints behind one Service port: ready
/// endpoints, or, when none is ready, those still serving while terminating (as kube-proxy
/// does).
pub(crate) fn endpoint_upstreams(
    service: &(String, String),
    svc_port: &k8s_openapi::api::core::v1::ServicePort,
    scheme: &str,
    objects: &Objects,
    weight: u32,
) -> Vec<UpstreamInput> {
    // EndpointSlice ports carry the Service port's name and the resolved target port.
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in objects.slices_of(service) {
        let wanted = svc_port.name.as_deref().unwrap_or("");
        let Some(port) =
            slice.ports.iter().flatten().find(|p| p.name.as_deref().unwrap_or("") == wanted).and_then(|p| p.port)
        else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            let c = ep.conditions.clone().unwrap_or_default();
            let bucket = if c.ready.unwrap_or(true) {
                &mut ready
            } else if c.serving.unwrap_or(false) && c.terminating.unwrap_or(false) {
                &mut terminating
            } else {
                continue;
            };
            for addr in &ep.addresses {
                let host = if addr.contains(':') { format!("[{addr}]") } else { addr.clone() };
                bucket.push(format!("{scheme}://{host}:{port}"));
            }
        }
    }
    let mut urls = if ready.is_empty() { terminating } else { ready };
    urls.sort();
    urls.dedup();
    urls.into_iter().map(|url| UpstreamInput { url, weight }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn meta(name: &str, version: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("web".into()),
            resource_version: Some(version.into()),
            labels: Some([("kubernetes.io/service-name".to_owned(), "app".to_owned())].into()),
            ..ObjectMeta::default()
        }
    }

    fn slice(name: &str, version: &str) -> EndpointSlice {
        EndpointSlice { metadata: meta(name, version), ..EndpointSlice::default() }
    }

    fn world(slices: &[(&str, &str)], service: Option<&str>) -> Objects {
        let mut o = Objects::default();
        for (name, version) in slices {
            o.add_slice(slice(name, version));
        }
        if let Some(v) = service {
            o.services.insert(key(), Arc::new(Service { metadata: meta("app", v), ..Service::default() }));
        }
        o
    }

    fn key() -> (String, String) {
        ("web".into(), "app".into())
    }

    /// What a translation against `o` reads: the Service, its slices, a missing Secret.
    fn reads(o: &Objects) -> Vec<Read> {
        let _ = o.service(&key());
        let _ = o.slices_of(&key()).count();
        let _ = o.secret(&("web".into(), "tls".into()));
        o.take_reads()
    }

    #[test]
    fn a_translation_is_stale_when_anything_it_read_changed() {
        let seen = reads(&world(&[("a", "1"), ("b", "2")], Some("7")));
        assert!(world(&[("a", "1"), ("b", "2")], Some("7")).unchanged(&seen));
        let changed = [
            ("a slice's version", world(&[("a", "1"), ("b", "3")], Some("7"))),
            ("one slice more", world(&[("a", "1"), ("b", "2"), ("c", "1")], Some("7"))),
            ("one slice fewer", world(&[("a", "1")], Some("7"))),
            ("no slices", world(&[], Some("7"))),
            ("the Service's version", world(&[("a", "1"), ("b", "2")], Some("8"))),
            ("the Service gone", world(&[("a", "1"), ("b", "2")], None)),
        ];
        for (what, now) in changed {
            assert!(!now.unchanged(&seen), "{what}");
        }
        let mut with_secret = world(&[("a", "1"), ("b", "2")], Some("7"));
        with_secret.secrets.insert(("web".into(), "tls".into()), Arc::new(Secret::default()));
        assert!(!with_secret.unchanged(&seen), "a missing Secret that appeared");
        let none = reads(&world(&[], None));
        assert!(world(&[], None).unchanged(&none), "missing then, missing now");
    }
}
