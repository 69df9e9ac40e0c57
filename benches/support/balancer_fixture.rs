//! Balancers of `n` endpoints for the pick benchmark and the allocation test.

use portcullis::config::{LbPolicy, RingSize, Upstream, UpstreamScheme, UpstreamTls};
use portcullis::proxy::balance::{Balancer, Tables};
use portcullis::proxy::endpoints::Registry;
use portcullis::proxy::upstream::{ClientCache, Target};

/// Every policy.
pub const POLICIES: [LbPolicy; 5] =
    [LbPolicy::RoundRobin, LbPolicy::Random, LbPolicy::LeastRequest, LbPolicy::RingHash, LbPolicy::Maglev];

/// A balancer over `n` equal endpoints of which every `down_every`-th is unhealthy (0: none).
pub fn balancer(policy: LbPolicy, n: usize, down_every: usize) -> (Balancer, Registry) {
    let reg = Registry::default();
    let cache = ClientCache::default();
    let ups: Vec<Upstream> = (0..n)
        .map(|i| Upstream {
            scheme: UpstreamScheme::Http,
            authority: format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256),
            host: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            weight: 1,
        })
        .collect();
    let targets: Vec<Target> =
        ups.iter().map(|u| Target::new(u, &UpstreamTls::default(), &cache, reg.endpoint("r", &u.authority))).collect();
    reg.retain(&ups.iter().map(|u| ("r", u.authority.as_str())).collect());
    if down_every > 0 {
        for t in targets.iter().step_by(down_every) {
            t.state.set_healthy(false);
        }
    }
    let table = Tables::default().get("r", policy, RingSize::default(), &ups);
    (Balancer::new(targets, policy, table, 50), reg)
}
