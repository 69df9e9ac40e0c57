//! Load balancing: the consistent-hash lookup tables, pure and self-contained. [`ring`] is
//! Envoy's `ring_hash`, [`maglev`] Google's Maglev, both placing endpoints by [`hash`] of
//! their keys, so a request's key keeps its endpoint across rebuilds and replicas.

pub mod hash;
pub mod maglev;
pub mod ring;
