//! The route table: compiled once per snapshot so that a lookup is a couple of hash probes
//! and a short scan, and never allocates.
//!
//! Precedence (PRODUCT.md): an exact host beats a `*.` wildcard, which beats "any host";
//! within a host, an exact path beats every prefix, the longest prefix wins, and regexes are
//! tried with the prefixes by pattern length (longest first), ties in declaration order.

use std::collections::HashMap;

use crate::config::{HostMatch, PathMatch, TunnelProtocol};

/// Routes grouped by host; `T` is whatever the data plane stores per route.
#[derive(Debug)]
pub struct RouteTable<T> {
    routes: Vec<T>,
    exact: HashMap<String, PathTable>,
    wildcard: HashMap<String, PathTable>,
    any: PathTable,
    /// Tunnel routes by (host, protocol, port): CONNECT names all three, and no tunnel
    /// route is ever an HTTP request's.
    tunnels: HashMap<(String, TunnelProtocol, u16), usize>,
}

#[derive(Debug, Default)]
struct PathTable {
    exact: HashMap<String, usize>,
    /// Prefix and regex matchers, longest first.
    ordered: Vec<(Matcher, usize)>,
    /// The catch-all of this host, if any.
    fallback: Option<usize>,
}

#[derive(Debug)]
enum Matcher {
    Prefix(String),
    Regex(regex::Regex),
}

impl PathTable {
    fn insert(&mut self, path: &PathMatch, idx: usize) {
        match path {
            PathMatch::Any => {
                self.fallback.get_or_insert(idx);
            }
            PathMatch::Exact(p) => {
                self.exact.entry(p.clone()).or_insert(idx);
            }
            PathMatch::Prefix(p) => self.ordered.push((Matcher::Prefix(p.clone()), idx)),
            PathMatch::Regex(r) => self.ordered.push((Matcher::Regex(r.clone()), idx)),
        }
    }

    fn finish(&mut self) {
        // Stable sort keeps declaration order among equals.
        self.ordered.sort_by_key(|(m, _)| std::cmp::Reverse(m.weight()));
    }

    fn lookup(&self, path: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(path) {
            return Some(i);
        }
        for (m, i) in &self.ordered {
            if m.matches(path) {
                return Some(*i);
            }
        }
        self.fallback
    }
}

impl Matcher {
    fn weight(&self) -> usize {
        match self {
            Matcher::Prefix(p) => p.len(),
            Matcher::Regex(r) => r.as_str().len().saturating_sub("^(?:)$".len()),
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Matcher::Prefix(p) => prefix_matches(p, path),
            Matcher::Regex(r) => r.is_match(path),
        }
    }
}

/// Kubernetes `Prefix` semantics: whole path elements only.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix) && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/')
}

impl<T> RouteTable<T> {
    /// Whether a route names `host` (lower case, no port), exactly or by a `*.` wildcard; a
    /// route for any host names none.
    pub fn names_host(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.exact.contains_key(&host)
            || host.split_once('.').is_some_and(|(_, rest)| self.wildcard.contains_key(rest))
            || self.tunnels.keys().any(|(h, _, _)| *h == host)
    }

    /// Builds the table; `key` gives each route's host and path matcher.
    pub fn new(routes: Vec<T>, key: impl Fn(&T) -> (&HostMatch, &PathMatch)) -> Self {
        Self::with_tunnels(routes, key, |_| None)
    }

    /// Builds the table; `key` gives each route's host and path matcher, and `tunnel` the
    /// protocol and port of a tunnel route (which only CONNECT finds, by
    /// [`Self::lookup_tunnel`]; its host must be exact).
    pub fn with_tunnels(
        routes: Vec<T>,
        key: impl Fn(&T) -> (&HostMatch, &PathMatch),
        tunnel: impl Fn(&T) -> Option<(TunnelProtocol, u16)>,
    ) -> Self {
        let mut exact: HashMap<String, PathTable> = HashMap::new();
        let mut wildcard: HashMap<String, PathTable> = HashMap::new();
        let mut any = PathTable::default();
        let mut tunnels = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            let (host, path) = key(r);
            if let Some((protocol, port)) = tunnel(r) {
                if let HostMatch::Exact(h) = host {
                    tunnels.entry((h.clone(), protocol, port)).or_insert(i);
                }
                continue;
            }
            match host {
                HostMatch::Exact(h) => exact.entry(h.clone()).or_default().insert(path, i),
                HostMatch::Wildcard(s) => wildcard.entry(s.clone()).or_default().insert(path, i),
                HostMatch::Any => any.insert(path, i),
            }
        }
        exact.values_mut().chain(wildcard.values_mut()).for_each(PathTable::finish);
        any.finish();
        Self { routes, exact, wildcard, any, tunnels }
    }

    /// The tunnel route for `host` (any case, no port, no trailing dot), `protocol` and
    /// `port`.
    pub fn lookup_tunnel(&self, host: &str, protocol: TunnelProtocol, port: u16) -> Option<usize> {
        if self.tunnels.is_empty() {
            return None;
        }
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        self.tunnels.get(&(host, protocol, port)).copied()
    }

    /// All routes, in declaration order.
    pub fn routes(&self) -> &[T] {
        &self.routes
    }

    /// Finds the route for a request. `host` may carry a port and any case; `path` must not
    /// carry the query. Allocation-free: the host is lower-cased into a stack buffer.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&T> {
        self.lookup_index(host, path).and_then(|i| self.routes.get(i))
    }

    /// As [`Self::lookup`], returning the route's index in [`Self::routes`].
    pub fn lookup_index(&self, host: &str, path: &str) -> Option<usize> {
        let mut buf = [0u8; 256];
        let host = normalize_host(host, &mut buf);
        let table_hit = |t: &PathTable| t.lookup(path);
        let idx = host
            .and_then(|h| {
                self.exact
                    .get(h)
                    .and_then(table_hit)
                    .or_else(|| h.split_once('.').and_then(|(_, s)| self.wildcard.get(s)).and_then(table_hit))
            })
            .or_else(|| self.any.lookup(path))?;
        Some(idx)
    }
}

/// Strips the port and a trailing dot and lower-cases into `buf`. `None` for hosts that
/// cannot be names (too long, IPv6 literals) — those only match "any host" routes.
fn normalize_host<'b>(host: &str, buf: &'b mut [u8; 256]) -> Option<&'b str> {
    if host.starts_with('[') {
        return None;
    }
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let host = host.strip_suffix('.').unwrap_or(host);
    let bytes = host.as_bytes();
    if bytes.len() > buf.len() {
        return None;
    }
    for (dst, src) in buf.iter_mut().zip(bytes) {
        *dst = src.to_ascii_lowercase();
    }
    std::str::from_utf8(&buf[..bytes.len()]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::{parse_from, parse_host};

    fn table(spec: &[(&str, &str)]) -> RouteTable<(HostMatch, PathMatch, String)> {
        let routes = spec
            .iter()
            .map(|(from, path)| {
                let host = if from.contains("://") { parse_from(from).unwrap() } else { parse_host(from).unwrap() };
                let pm = if let Some(p) = path.strip_prefix("=") {
                    PathMatch::Exact(p.to_owned())
                } else if let Some(r) = path.strip_prefix("~") {
                    PathMatch::Regex(regex::Regex::new(&format!("^(?:{r})$")).unwrap())
                } else if path.is_empty() || *path == "/" {
                    PathMatch::Any
                } else {
                    PathMatch::Prefix(path.trim_end_matches('/').to_owned())
                };
                (host, pm, format!("{from}{path}"))
            })
            .collect();
        RouteTable::new(routes, |r| (&r.0, &r.1))
    }

    fn hit<'a>(t: &'a RouteTable<(HostMatch, PathMatch, String)>, host: &str, path: &str) -> Option<&'a str> {
        t.lookup(host, path).map(|r| r.2.as_str())
    }

    /// The matching table of PRODUCT.md, case by case.
    #[test]
    fn kubernetes_path_semantics() {
        let t = table(&[("foo.com", "/foo"), ("foo.com", "=/foo"), ("foo.com", "/foo/bar/"), ("foo.com", "=/Exact")]);
        assert_eq!(hit(&t, "foo.com", "/foo"), Some("foo.com=/foo"), "Exact beats Prefix of the same length");
        assert_eq!(hit(&t, "foo.com", "/foo/"), Some("foo.com/foo"));
        assert_eq!(hit(&t, "foo.com", "/foo/baz"), Some("foo.com/foo"));
        assert_eq!(hit(&t, "foo.com", "/foobar"), None, "prefix matches whole elements only");
        assert_eq!(hit(&t, "foo.com", "/foo/bar"), Some("foo.com/foo/bar/"), "longest prefix wins");
        assert_eq!(hit(&t, "foo.com", "/foo/bar/x"), Some("foo.com/foo/bar/"));
        assert_eq!(hit(&t, "foo.com", "/foo/barx"), Some("foo.com/foo"));
        assert_eq!(hit(&t, "foo.com", "/exact"), None, "Exact is case-sensitive");
        assert_eq!(hit(&t, "foo.com", "/Exact"), Some("foo.com=/Exact"));
        assert_eq!(hit(&t, "foo.com", "/FOO"), None, "Prefix is case-sensitive");
    }

    #[test]
    fn host_semantics() {
        let t = table(&[("*.example.com", "/"), ("a.example.com", "/"), ("*", "=/only")]);
        assert_eq!(hit(&t, "a.example.com", "/"), Some("a.example.com/"), "exact host beats wildcard");
        assert_eq!(hit(&t, "B.Example.COM:8443", "/"), Some("*.example.com/"), "case and port ignored");
        assert_eq!(hit(&t, "b.example.com.", "/"), Some("*.example.com/"), "trailing dot ignored");
        assert_eq!(hit(&t, "example.com", "/"), None, "wildcard needs one label, not zero");
        assert_eq!(hit(&t, "x.y.example.com", "/"), None, "wildcard matches one label, not two");
        assert_eq!(hit(&t, "other.org", "/only"), Some("*=/only"), "any-host routes catch the rest");
        assert_eq!(hit(&t, "[::1]:443", "/only"), Some("*=/only"));
        assert_eq!(hit(&t, &"a".repeat(300), "/only"), Some("*=/only"));
    }

    #[test]
    fn host_falls_back_to_wildcard_then_any_when_path_misses() {
        let t = table(&[("a.example.com", "/api"), ("*.example.com", "/"), ("*", "/")]);
        assert_eq!(hit(&t, "a.example.com", "/api/x"), Some("a.example.com/api"));
        assert_eq!(hit(&t, "a.example.com", "/web"), Some("*.example.com/"));
        assert_eq!(hit(&t, "z.org", "/web"), Some("*/"));
    }

    #[test]
    fn regex_and_prefix_order_by_length() {
        let t = table(&[("h", "/abcd"), ("h", "~/abcd/[0-9]+"), ("h", "~/.*")]);
        assert_eq!(hit(&t, "h", "/abcd/12"), Some("h~/abcd/[0-9]+"), "longer regex first");
        assert_eq!(hit(&t, "h", "/abcd/x"), Some("h/abcd"), "longer prefix beats shorter regex");
        assert_eq!(hit(&t, "h", "/zzz"), Some("h~/.*"));
    }

    #[test]
    fn tunnel_routes_are_found_by_host_protocol_and_port_and_never_by_http() {
        use crate::config::validate::parse_route_from;
        let froms = ["https://db.test", "tcp+https://db.test:5432", "udp+https://db.test:53", "tcp+https://db.test:22"];
        let routes: Vec<_> = froms.iter().map(|f| (parse_route_from(f).unwrap(), (*f).to_owned())).collect();
        let t =
            RouteTable::with_tunnels(routes, |r| (&r.0 .0, &PathMatch::Any), |r| r.0 .1.map(|t| (t.protocol, t.port)));
        assert_eq!(t.lookup_tunnel("DB.test.", TunnelProtocol::Tcp, 5432), Some(1));
        assert_eq!(t.lookup_tunnel("db.test", TunnelProtocol::Udp, 53), Some(2));
        assert_eq!(t.lookup_tunnel("db.test", TunnelProtocol::Tcp, 22), Some(3));
        assert_eq!(t.lookup_tunnel("db.test", TunnelProtocol::Udp, 5432), None);
        assert_eq!(t.lookup_tunnel("other.test", TunnelProtocol::Tcp, 5432), None);
        // HTTP finds the web route only.
        assert_eq!(t.lookup_index("db.test", "/"), Some(0));
        // A host with only tunnel routes is a route host (a sign-in may return there), but
        // no HTTP request reaches it.
        let only: Vec<_> = ["tcp+https://ssh.test:22"].iter().map(|f| (parse_route_from(f).unwrap(), ())).collect();
        let t =
            RouteTable::with_tunnels(only, |r| (&r.0 .0, &PathMatch::Any), |r| r.0 .1.map(|t| (t.protocol, t.port)));
        assert!(t.names_host("ssh.test"));
        assert_eq!(t.lookup_index("ssh.test", "/"), None);
    }
}
