//! Phase 6, pick the upstream: the route's balancer chooses an available endpoint, which is
//! then counted in flight (LEAST_REQUEST, the retry budget) until the request's log record
//! is written. RING_HASH and MAGLEV choose by the request's hash key: the signed-in
//! session's (sent upstream as `x-portcullis-routing-key`, as Pomerium's routing key), else
//! the route's `lb_hash_header` or `lb_hash_cookie`, else the client's IP.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue, COOKIE};
use http::Version;

use crate::config::{HashCookie, HashOn};
use crate::proxy::balance::hash::hash;
use crate::proxy::error::{Error, Kind, Result};
use crate::proxy::log::{InFlight, RequestLog};
use crate::proxy::snapshot::{CompiledRoute, Snapshot};

/// The header a session's routing key goes upstream in; a client's own is dropped.
pub(crate) static ROUTING_KEY: HeaderName = HeaderName::from_static("x-portcullis-routing-key");

/// The hash key of a request and what it costs the response: a sticky cookie to set.
pub(crate) struct HashKey {
    /// The key RING_HASH and MAGLEV look up (0 for the other policies, which ignore it).
    pub key: u64,
    /// `Set-Cookie` for a client that had no `lb_hash_cookie` yet.
    pub set_cookie: Option<HeaderValue>,
}

/// The hash key of a request to `route` from `peer`; `session` is the signed-in session's
/// id. Puts the routing key in `headers` (and removes a client's own) on a hashing route.
pub(crate) fn hash_key(
    route: &CompiledRoute,
    headers: &mut HeaderMap,
    peer: IpAddr,
    session: Option<&str>,
    tls: bool,
) -> HashKey {
    let none = HashKey { key: 0, set_cookie: None };
    if !route.balancer.policy().hashes() {
        return none;
    }
    headers.remove(&ROUTING_KEY);
    if let Some(sid) = session {
        // A digest rather than the id: the id is what sign-out revokes, not the upstream's.
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, sid.as_bytes());
        let mut hex = [0u8; 32];
        for (i, b) in digest.as_ref()[..16].iter().enumerate() {
            hex[2 * i] = HEX[usize::from(b >> 4)];
            hex[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        if let Ok(v) = HeaderValue::from_bytes(&hex) {
            headers.insert(&ROUTING_KEY, v);
        }
        return HashKey { key: hash(&hex), set_cookie: None };
    }
    match &route.route.hash_on {
        HashOn::Header(name) => match headers.get(name) {
            Some(v) => HashKey { key: hash(v.as_bytes()), set_cookie: None },
            None => HashKey { key: ip_key(peer), set_cookie: None },
        },
        HashOn::Cookie(c) => match cookie(headers, &c.name) {
            Some(v) => HashKey { key: hash(v), set_cookie: None },
            None => new_cookie(c, tls),
        },
        HashOn::SourceIp => HashKey { key: ip_key(peer), set_cookie: None },
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The client's IP, not its port: all of a client's connections land alike. IPv4-mapped
/// IPv6 addresses hash as the IPv4 address they are.
fn ip_key(peer: IpAddr) -> u64 {
    match peer.to_canonical() {
        IpAddr::V4(v4) => hash(&v4.octets()),
        IpAddr::V6(v6) => hash(&v6.octets()),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers.get_all(COOKIE).iter().flat_map(|v| v.as_bytes().split(|&b| b == b';')).find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..]).filter(|v| !v.is_empty())
    })
}

/// A fresh random sticky value (a client with no cookie yet), hashed as it will be when the
/// client sends it back.
fn new_cookie(c: &HashCookie, tls: bool) -> HashKey {
    let value: [u8; 16] = rand::random();
    let mut hex = [0u8; 32];
    for (i, b) in value.iter().enumerate() {
        hex[2 * i] = HEX[usize::from(b >> 4)];
        hex[2 * i + 1] = HEX[usize::from(b & 15)];
    }
    let text = std::str::from_utf8(&hex).expect("hex is ASCII");
    let mut cookie = format!("{}={text}; Path={}; HttpOnly", c.name, c.path);
    if let Some(ttl) = c.ttl {
        let _ = write!(cookie, "; Max-Age={}", ttl.as_secs());
    }
    if tls {
        cookie.push_str("; Secure");
    }
    HashKey { key: hash(&hex), set_cookie: HeaderValue::try_from(cookie).ok() }
}

/// Picks an endpoint of route `route` in `snap` for hash key `key` and records it in `log`;
/// returns its index in the route's balancer.
#[inline]
pub(crate) fn pick(snap: &Arc<Snapshot>, route: usize, key: u64, log: &mut RequestLog) -> Result<usize> {
    let compiled = &snap.routes.routes()[route];
    let target = compiled.balancer.pick(key, None).ok_or_else(|| Error::new(Kind::NoEndpoints))?;
    log.in_flight = Some(InFlight::new(&compiled.balancer.targets()[target].state));
    log.upstream = Some(target);
    // The premature-reset rule's denominator: HTTP/2 and HTTP/3 requests that cost the
    // upstream something.
    if log.version >= Version::HTTP_2 {
        if let Some(g) = &log.guard {
            g.forwarded();
        }
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; sticky2=x"));
        h.append(COOKIE, HeaderValue::from_static(" sticky=abc ;b=2"));
        assert_eq!(cookie(&h, "sticky"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "sticky2"), Some(&b"x"[..]));
        assert_eq!(cookie(&h, "stick"), None);
        h.insert(COOKIE, HeaderValue::from_static("sticky="));
        assert_eq!(cookie(&h, "sticky"), None, "an empty value is no key");
    }

    #[test]
    fn a_new_cookie_hashes_as_its_value_will() {
        let c = HashCookie { name: "sticky".into(), ttl: Some(std::time::Duration::from_secs(3600)), path: "/".into() };
        let k = new_cookie(&c, true);
        let set = k.set_cookie.unwrap();
        let set = set.to_str().unwrap();
        assert!(set.ends_with("; Path=/; HttpOnly; Max-Age=3600; Secure"), "{set}");
        let value = set.strip_prefix("sticky=").unwrap().split(';').next().unwrap();
        assert_eq!(hash(value.as_bytes()), k.key);
    }

    #[test]
    fn the_ip_not_the_port_is_the_key() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(ip_key(v4), ip_key(mapped));
        assert_ne!(ip_key(v4), ip_key("192.0.2.2".parse().unwrap()));
    }
}
