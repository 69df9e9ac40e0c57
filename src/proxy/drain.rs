//! Listener generations and their drains: how a change to what a listener holds
//! (certificates, the downstream mTLS CA, `codec_type`, the connection timeouts) reaches
//! connections without failing a request.
//!
//! A [`super::generation::ListenerGeneration`] is everything a connection is accepted with. The listening socket
//! is never closed for a new generation: the accept loop stamps each new connection with the
//! generation current at that moment, so not one connection attempt is refused during the
//! hand-over. The old generation then drains: its connections finish their in-flight work
//! and close (HTTP/1.1 with `Connection: close` on the in-flight response, idle ones at once;
//! HTTP/2 with a graceful GOAWAY); upgraded connections keep running until `drain_timeout`,
//! when everything still open in that drain is closed.
//!
//! With `drain_scope: affected` (the default) a certificate-only change drains only the
//! connections that negotiated a certificate that changed; the others are adopted by the new
//! generation, since nothing they hold changed. Every other change drains all of them.
//!
//! [`Drains`] keeps one entry per live connection, under a mutex taken when a connection
//! opens, finishes its TLS handshake and closes, and when a generation is retired: never per
//! request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::{GenerationLabels, Metrics};
use crate::tls::CertStore;

/// Which connections of the retired generation a drain affects.
#[derive(Clone)]
pub enum Affected {
    /// Every one.
    All,
    /// Those whose server name now gets a different certificate than the one they
    /// negotiated (and TLS connections still in their handshake); plain HTTP connections are
    /// not affected by certificates.
    CertificateChanged(Arc<CertStore>),
}

/// A connection's signals: finish in-flight work and close; close now.
#[derive(Clone, Default)]
pub struct ConnSignals {
    /// Graceful: GOAWAY / `Connection: close`.
    pub drain: CancellationToken,
    /// At once: `drain_timeout` ended (or shutdown's grace did).
    pub close: CancellationToken,
}

struct Entry {
    listener: &'static str,
    generation: u64,
    tls: bool,
    sni: Option<String>,
    fingerprint: Option<String>,
    handshake_done: bool,
    signals: ConnSignals,
    /// The generation whose drain took this connection.
    draining: Option<u64>,
}

impl Entry {
    fn affected_by(&self, affected: &Affected) -> bool {
        match affected {
            Affected::All => true,
            Affected::CertificateChanged(store) => {
                self.tls
                    && (!self.handshake_done
                        || store.fingerprint_for(self.sni.as_deref()) != self.fingerprint.as_deref())
            }
        }
    }
}

struct Drain {
    started: Instant,
    remaining: usize,
    reason: String,
    expired: bool,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    current: u64,
    /// Set by [`Drains::drain_all`]: a connection registered from now on drains at once.
    shutting_down: bool,
    conns: HashMap<u64, Entry>,
    drains: HashMap<u64, Drain>,
    /// Live connections per (listener, generation), for the per-generation gauge.
    per_generation: HashMap<(&'static str, u64), i64>,
}

/// A draining generation, for `/listeners`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DrainStatus {
    /// The retired generation.
    pub generation: u64,
    /// Connections it still has open.
    pub connections: usize,
    /// Seconds since the drain started.
    pub seconds: f64,
    /// What changed.
    pub reason: String,
    /// `drain_timeout` has ended and its connections were told to close.
    pub expired: bool,
}

/// Every live downstream connection and every drain in progress.
pub struct Drains {
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
    emptied: Notify,
}

impl Drains {
    /// No connections yet; generation 1 is current.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        let inner = Inner { current: 1, ..Inner::default() };
        Arc::new(Self { inner: Mutex::new(inner), metrics, emptied: Notify::new() })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }

    fn count(&self, inner: &mut Inner, listener: &'static str, generation: u64, delta: i64) {
        let n = inner.per_generation.entry((listener, generation)).or_default();
        *n += delta;
        let labels = GenerationLabels { listener, generation };
        if *n == 0 && generation != inner.current {
            inner.per_generation.remove(&(listener, generation));
            self.metrics.generation_connections.remove(&labels);
        } else {
            self.metrics.generation_connections.get_or_create(&labels).set(*n);
        }
    }

    /// Registers a connection accepted under `generation`; dropping the handle unregisters it.
    pub fn register(self: &Arc<Self>, listener: &'static str, generation: u64, tls: bool) -> ConnHandle {
        let signals = ConnSignals::default();
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        let entry = Entry {
            listener,
            generation,
            tls,
            sni: None,
            fingerprint: None,
            handshake_done: false,
            signals: signals.clone(),
            draining: None,
        };
        inner.conns.insert(id, entry);
        self.count(&mut inner, listener, generation, 1);
        if inner.shutting_down {
            // Accepted from the queue after shutdown began: part of the shutdown drain.
            let last = inner.current - 1;
            self.drain_of(&mut inner, last, "shutdown").remaining += 1;
            inner.conns.get_mut(&id).expect("just inserted").draining = Some(last);
            signals.drain.cancel();
        }
        ConnHandle { id, drains: self.clone(), signals }
    }

    fn handshake_done(&self, id: u64, sni: Option<String>, fingerprint: Option<String>) {
        if let Some(e) = self.lock().conns.get_mut(&id) {
            e.sni = sni;
            e.fingerprint = fingerprint;
            e.handshake_done = true;
        }
    }

    fn unregister(&self, id: u64) {
        let mut inner = self.lock();
        let Some(e) = inner.conns.remove(&id) else { return };
        self.count(&mut inner, e.listener, e.generation, -1);
        if let Some(generation) = e.draining {
            let done = inner.drains.get_mut(&generation).is_some_and(|d| {
                d.remaining -= 1;
                d.remaining == 0
            });
            if done {
                let d = inner.drains.remove(&generation).expect("present");
                self.metrics.draining.dec();
                tracing::info!(generation, elapsed = ?d.started.elapsed(), reason = %d.reason, "listener generation drained");
            }
        }
        if inner.conns.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    /// Retires generation `old` (and any older connection not draining yet) for `new`:
    /// connections `affected` selects drain, and are closed when `timeout` ends; the others are
    /// adopted by `new`. Returns how many connections drain.
    pub fn retire(self: &Arc<Self>, old: u64, new: u64, affected: &Affected, timeout: Duration, reason: &str) -> usize {
        let mut inner = self.lock();
        inner.current = new;
        let mut taken = 0;
        let mut adopted = Vec::new();
        for e in inner.conns.values_mut() {
            if e.draining.is_some() || e.generation > old {
                continue;
            }
            if e.affected_by(affected) {
                e.draining = Some(old);
                e.signals.drain.cancel();
                taken += 1;
            } else {
                adopted.push((e.listener, e.generation));
                e.generation = new;
            }
        }
        for (listener, generation) in adopted {
            self.count(&mut inner, listener, generation, -1);
            self.count(&mut inner, listener, new, 1);
        }
        // Generations with nothing left are dropped from the gauge.
        let empty: Vec<_> =
            inner.per_generation.iter().filter(|(k, n)| **n == 0 && k.1 != new).map(|(k, _)| *k).collect();
        for (listener, generation) in empty {
            inner.per_generation.remove(&(listener, generation));
            self.metrics.generation_connections.remove(&GenerationLabels { listener, generation });
        }
        let adopted_count = inner.conns.values().filter(|e| e.generation == new).count();
        tracing::info!(
            generation = old,
            next = new,
            draining = taken,
            adopted = adopted_count,
            drain_timeout = ?timeout,
            %reason,
            "listener generation draining"
        );
        if taken == 0 {
            tracing::info!(generation = old, "listener generation drained (nothing to drain)");
            return 0;
        }
        self.drain_of(&mut inner, old, reason).remaining += taken;
        drop(inner);
        let drains = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            drains.expire(old);
        });
        taken
    }

    /// The drain of `generation`, started now if it is not running yet (two retirements of
    /// the same generation, such as shutdown right after a reload, merge into one).
    fn drain_of<'a>(&self, inner: &'a mut Inner, generation: u64, reason: &str) -> &'a mut Drain {
        inner.drains.entry(generation).or_insert_with(|| {
            self.metrics.draining.inc();
            Drain { started: Instant::now(), remaining: 0, reason: reason.to_owned(), expired: false }
        })
    }

    /// `drain_timeout` ended for a drain: close what is left of it.
    fn expire(&self, generation: u64) {
        let mut inner = self.lock();
        let Some(d) = inner.drains.get_mut(&generation) else { return };
        d.expired = true;
        tracing::warn!(generation, connections = d.remaining, "drain_timeout ended; closing the remaining connections");
        for e in inner.conns.values().filter(|e| e.draining == Some(generation)) {
            e.signals.close.cancel();
        }
    }

    /// Drains every connection (shutdown): returns how many had to be closed by force when
    /// `grace` ended.
    pub async fn drain_all(self: &Arc<Self>, grace: Duration) -> usize {
        let current = {
            let mut inner = self.lock();
            inner.shutting_down = true;
            inner.current
        };
        self.retire(current, current + 1, &Affected::All, grace, "shutdown");
        let wait = async {
            loop {
                let emptied = self.emptied.notified();
                if self.lock().conns.is_empty() {
                    return;
                }
                emptied.await;
            }
        };
        if tokio::time::timeout(grace, wait).await.is_ok() {
            return 0;
        }
        let left = self.lock().conns.len();
        for e in self.lock().conns.values() {
            e.signals.close.cancel();
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while !self.lock().conns.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        left
    }

    /// The drains in progress, oldest first.
    pub fn status(&self) -> Vec<DrainStatus> {
        let inner = self.lock();
        let mut out: Vec<_> = inner
            .drains
            .iter()
            .map(|(g, d)| DrainStatus {
                generation: *g,
                connections: d.remaining,
                seconds: d.started.elapsed().as_secs_f64(),
                reason: d.reason.clone(),
                expired: d.expired,
            })
            .collect();
        out.sort_by_key(|d| d.generation);
        out
    }

    /// Live connections per generation.
    pub fn connections(&self) -> HashMap<u64, usize> {
        let mut out = HashMap::new();
        for e in self.lock().conns.values() {
            *out.entry(e.generation).or_default() += 1;
        }
        out
    }
}

/// A live connection's registration; unregisters on drop (when the connection, and any tunnel
/// it was upgraded into, has ended).
pub struct ConnHandle {
    id: u64,
    drains: Arc<Drains>,
    /// Its drain and close signals.
    pub signals: ConnSignals,
}

impl ConnHandle {
    /// Records what the TLS handshake chose, which decides whether a certificate change
    /// affects this connection.
    pub fn handshake_done(&self, sni: Option<String>, fingerprint: Option<String>) {
        self.drains.handshake_done(self.id, sni, fingerprint);
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        self.drains.unregister(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Certificate;

    fn store(certs: &[Certificate]) -> Arc<CertStore> {
        Arc::new(CertStore::new(certs))
    }

    #[tokio::test]
    async fn a_certificate_change_drains_only_the_connections_that_negotiated_it() {
        let metrics = Arc::new(Metrics::new());
        let drains = Drains::new(metrics.clone());
        let a1 = crate::pki::self_signed(&["a.test".to_owned()]);
        let b = crate::pki::self_signed(&["b.test".to_owned()]);
        let a2 = crate::pki::self_signed(&["a.test".to_owned()]);
        let old = store(&[a1.clone(), b.clone()]);
        let new = store(&[a2, b]);

        let on_a = drains.register("https-ingress", 1, true);
        on_a.handshake_done(Some("a.test".into()), old.fingerprint_for(Some("a.test")).map(str::to_owned));
        let on_b = drains.register("https-ingress", 1, true);
        on_b.handshake_done(Some("b.test".into()), old.fingerprint_for(Some("b.test")).map(str::to_owned));
        let handshaking = drains.register("https-ingress", 1, true);
        let plain = drains.register("http-ingress", 1, false);

        let n = drains.retire(1, 2, &Affected::CertificateChanged(new), Duration::from_secs(60), "certificates");
        assert_eq!(n, 2, "a.test's connection and the one still in its handshake");
        assert!(on_a.signals.drain.is_cancelled() && handshaking.signals.drain.is_cancelled());
        assert!(!on_b.signals.drain.is_cancelled() && !plain.signals.drain.is_cancelled());
        assert_eq!(metrics.draining.get(), 1);
        assert_eq!(drains.connections()[&2], 2, "the others are adopted by the new generation");
        drop(on_a);
        assert_eq!(metrics.draining.get(), 1, "one connection of the drain is still open");
        drop(handshaking);
        assert_eq!(metrics.draining.get(), 0, "drained");
        assert!(drains.status().is_empty());
        let text = metrics.encode();
        assert!(!text.contains("generation=\"1\""), "the finished generation leaves the gauge:\n{text}");
        assert!(text.contains("listener=\"https-ingress\",generation=\"2\"} 1"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn drain_timeout_closes_what_is_left_and_all_takes_everything() {
        let metrics = Arc::new(Metrics::new());
        let drains = Drains::new(metrics.clone());
        let upgraded = drains.register("https-ingress", 1, true);
        let plain = drains.register("http-ingress", 1, false);
        assert_eq!(drains.retire(1, 2, &Affected::All, Duration::from_secs(600), "timeout_idle"), 2);
        assert!(!upgraded.signals.close.is_cancelled());
        tokio::time::sleep(Duration::from_secs(599)).await;
        assert!(!upgraded.signals.close.is_cancelled(), "not before drain_timeout");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(upgraded.signals.close.is_cancelled() && plain.signals.close.is_cancelled());
        assert!(drains.status()[0].expired);
        drop((upgraded, plain));
        assert_eq!(metrics.draining.get(), 0);
    }
}
