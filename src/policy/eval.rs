//! Deciding a request against a [`Policy`]: deny wins, then any allow, else no rule matched
//! (which the caller answers with 401 when the request had no identity, 403 otherwise).

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::{Action, CertMatcher, Criterion, ListMatcher, ListTest, Operator, Policy, Rule, StringMatcher, StringTest};

/// A verified identity: the claims of a token (or, later, a session) the proxy checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Identity {
    /// `sub`.
    pub subject: Option<String>,
    /// `email`.
    pub email: Option<String>,
    /// `groups`.
    pub groups: Vec<String>,
    /// Every claim, for `claim/<name>`.
    pub claims: Map<String, Value>,
}

/// The facts of the connection's verified client certificate that a policy can test.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertFacts {
    /// SHA-256 of the certificate, hex, lower case.
    pub fingerprint: String,
    /// SHA-256 of its SubjectPublicKeyInfo, base64.
    pub spki_hash: String,
    /// DNS names among its subject alternative names.
    pub san_dns: Vec<String>,
    /// Email addresses among them.
    pub san_email: Vec<String>,
    /// URIs among them.
    pub san_uri: Vec<String>,
}

/// A request as a policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// The verified identity, if any.
    pub identity: Option<&'a Identity>,
    /// The request's method.
    pub method: &'a str,
    /// The request's path.
    pub path: &'a str,
    /// The client's address.
    pub source_ip: IpAddr,
    /// The connection's verified client certificate, if any.
    pub client_cert: Option<&'a CertFacts>,
    /// The client presented a certificate that did not verify.
    pub invalid_client_cert: bool,
    /// The request is a CORS preflight.
    pub cors_preflight: bool,
    /// When the request is decided (the time criteria read it).
    pub now: jiff::Timestamp,
}

/// What a policy decided, and which rule decided it (the access log's rule index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// An allow rule matched and no deny rule did.
    Allow {
        /// The first allow rule that matched.
        rule: usize,
    },
    /// A deny rule matched.
    Deny {
        /// The first deny rule that matched.
        rule: usize,
    },
    /// No rule matched: access is not granted.
    NoMatch,
}

impl Policy {
    /// Decides `facts`: deny wins, then the first matching allow rule.
    pub fn decide(&self, facts: &Facts<'_>) -> Decision {
        let mut allowed = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.matches(facts) {
                match rule.action {
                    Action::Deny => return Decision::Deny { rule: i },
                    Action::Allow => {
                        allowed.get_or_insert(i);
                    }
                }
            }
        }
        allowed.map_or(Decision::NoMatch, |rule| Decision::Allow { rule })
    }
}

impl Rule {
    /// Whether one of its operators matches.
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        self.operators.iter().any(|op| op.matches(facts))
    }
}

impl Operator {
    /// Pomerium's meanings: `not` is none, `nor` is not all.
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        match self {
            Operator::And(c) => c.iter().all(|c| c.matches(facts)),
            Operator::Or(c) => c.iter().any(|c| c.matches(facts)),
            Operator::Not(c) => !c.iter().any(|c| c.matches(facts)),
            Operator::Nor(c) => !c.iter().all(|c| c.matches(facts)),
        }
    }
}

impl Criterion {
    /// Whether the request has this fact. A criterion about an identity never matches a
    /// request without one.
    pub fn matches(&self, f: &Facts<'_>) -> bool {
        match self {
            Criterion::Accept => true,
            Criterion::Reject => false,
            Criterion::AuthenticatedUser => f.identity.is_some(),
            Criterion::Email(m) => f.identity.and_then(|i| i.email.as_deref()).is_some_and(|e| m.matches(e)),
            Criterion::Domain(m) => f
                .identity
                .and_then(|i| i.email.as_deref())
                .and_then(|e| e.rsplit_once('@'))
                .is_some_and(|(_, domain)| m.matches(domain)),
            Criterion::User(m) => f.identity.and_then(|i| i.subject.as_deref()).is_some_and(|s| m.matches(s)),
            Criterion::Claim { name, matcher } => {
                f.identity.and_then(|i| i.claims.get(name)).is_some_and(|v| claim_matches(v, matcher))
            }
            Criterion::Groups(m) => f.identity.is_some_and(|i| m.matches(&i.groups)),
            Criterion::HttpMethod(m) => m.matches(f.method),
            Criterion::HttpPath(m) => m.matches(f.path),
            Criterion::SourceIp(nets) => nets.iter().any(|n| n.contains(f.source_ip)),
            Criterion::ClientCertificate(m) => f.client_cert.is_some_and(|c| m.matches(c)),
            Criterion::InvalidClientCertificate => f.invalid_client_cert,
            Criterion::CorsPreflight => f.cors_preflight,
            Criterion::Date { after, before } => after.is_none_or(|a| f.now > a) && before.is_none_or(|b| f.now < b),
            Criterion::DayOfWeek { days, zone } => {
                days[usize::try_from(zone.tz.to_datetime(f.now).weekday().to_monday_zero_offset()).unwrap_or(0)]
            }
            Criterion::TimeOfDay { after, before, zone } => {
                let t = zone.tz.to_datetime(f.now).time();
                match (after, before) {
                    (Some(a), Some(b)) if a > b => t >= *a || t < *b,
                    _ => after.is_none_or(|a| t >= a) && before.is_none_or(|b| t < b),
                }
            }
        }
    }
}

/// A claim's value against a string matcher: a string, a number or a boolean as written, or
/// any of a list's.
fn claim_matches(v: &Value, m: &StringMatcher) -> bool {
    match v {
        Value::String(s) => m.matches(s),
        Value::Number(n) => m.matches(&n.to_string()),
        Value::Bool(b) => m.matches(if *b { "true" } else { "false" }),
        Value::Array(items) => items.iter().any(|i| !i.is_array() && claim_matches(i, m)),
        Value::Null | Value::Object(_) => false,
    }
}

impl StringMatcher {
    /// Whether every test holds for `s`.
    pub fn matches(&self, s: &str) -> bool {
        self.0.iter().all(|t| match t {
            StringTest::Is(v) => s == v,
            StringTest::StartsWith(v) => s.starts_with(v.as_str()),
            StringTest::EndsWith(v) => s.ends_with(v.as_str()),
            StringTest::Contains(v) => s.contains(v.as_str()),
            StringTest::In(vs) => vs.iter().any(|v| v == s),
            StringTest::NotIn(vs) => !vs.iter().any(|v| v == s),
            StringTest::Not(v) => s != v,
        })
    }
}

impl ListMatcher {
    /// Whether every test holds for `list`.
    pub fn matches(&self, list: &[String]) -> bool {
        self.0.iter().all(|t| match t {
            ListTest::Has(v) => list.iter().any(|x| x == v),
            ListTest::Is(v) => list.len() == 1 && list[0] == *v,
            ListTest::Exclude(v) => !list.iter().any(|x| x == v),
        })
    }
}

impl CertMatcher {
    /// Whether every test it has holds for `c`.
    pub fn matches(&self, c: &CertFacts) -> bool {
        let sans =
            |m: &Option<StringMatcher>, names: &[String]| m.as_ref().is_none_or(|m| names.iter().any(|n| m.matches(n)));
        (self.fingerprint.is_empty() || self.fingerprint.contains(&c.fingerprint))
            && (self.spki_hash.is_empty() || self.spki_hash.contains(&c.spki_hash))
            && sans(&self.san_dns, &c.san_dns)
            && sans(&self.san_email, &c.san_email)
            && sans(&self.san_uri, &c.san_uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::errors::Errors;

    fn policy(yaml: &str) -> Policy {
        let v: Value = serde_yaml_ng::from_str(yaml).unwrap();
        let mut errs = Errors::default();
        let p = super::super::parse::policy("policy", &v, &mut errs);
        assert!(errs.is_empty(), "{:?}", errs.into_vec());
        p.unwrap()
    }

    fn facts(identity: Option<&Identity>) -> Facts<'_> {
        Facts {
            identity,
            method: "GET",
            path: "/app/x",
            source_ip: "10.1.2.3".parse().unwrap(),
            client_cert: None,
            invalid_client_cert: false,
            cors_preflight: false,
            // A Tuesday, 13:30 in Berlin, already Wednesday on Kiritimati (UTC+14).
            now: "2026-12-01T12:30:00Z".parse().unwrap(),
        }
    }

    fn alice() -> Identity {
        let claims = serde_json::json!({"sub": "u-1", "email": "alice@example.com", "groups": ["eng", "admins"],
            "department": "eng", "level": 3, "roles": ["reader", "writer"], "verified": true});
        Identity {
            subject: Some("u-1".into()),
            email: Some("alice@example.com".into()),
            groups: vec!["eng".into(), "admins".into()],
            claims: claims.as_object().unwrap().clone(),
        }
    }

    /// Each criterion against the same request: (criterion YAML, matches for alice, matches
    /// with no identity).
    #[test]
    fn every_criterion_and_matcher() {
        let cert = CertFacts {
            fingerprint: "ab12".into(),
            spki_hash: "c3BraQ==".into(),
            san_dns: vec!["client.internal".into()],
            san_email: vec!["ops@example.com".into()],
            san_uri: vec!["spiffe://cluster/ns/a".into()],
        };
        let a = alice();
        let table: &[(&str, bool, bool)] = &[
            ("accept: true", true, true),
            ("reject: true", false, false),
            ("authenticated_user: true", true, false),
            ("email: alice@example.com", true, false),
            ("email: {is: bob@example.com}", false, false),
            ("email: {starts_with: alice@}", true, false),
            ("email: {ends_with: '@example.com'}", true, false),
            ("email: {contains: ice@ex}", true, false),
            ("email: {in: [bob@example.com, alice@example.com]}", true, false),
            ("email: {not_in: [bob@example.com]}", true, false),
            ("email: {not_in: [alice@example.com]}", false, false),
            ("email: {starts_with: alice, ends_with: .org}", false, false),
            ("domain: example.com", true, false),
            ("domain: {is: example.org}", false, false),
            ("user: u-1", true, false),
            ("claim/department: eng", true, false),
            ("claim/level: '3'", true, false),
            ("claim/roles: writer", true, false),
            ("claim/roles: {in: [owner]}", false, false),
            ("claim/verified: 'true'", true, false),
            ("claim/missing: x", false, false),
            ("groups: {has: admins}", true, false),
            ("groups: {has: ops}", false, false),
            ("groups: admins", true, false),
            ("groups: {is: admins}", false, false),
            ("groups: {exclude: ops}", true, false),
            ("groups: {exclude: eng}", false, false),
            ("email: {not: bob@example.com}", true, false),
            ("email: {not: alice@example.com}", false, false),
            ("http_method: GET", true, true),
            ("http_method: {in: [POST, PUT]}", false, false),
            ("http_path: {starts_with: /app/}", true, true),
            ("source_ip: 10.0.0.0/8", true, true),
            ("source_ip: [192.168.0.0/16, '::1']", false, false),
            ("client_certificate: {fingerprint: AB12}", true, true),
            ("client_certificate: {fingerprint: [ff, 'AB:12']}", true, true),
            ("client_certificate: {spki_hash: c3BraQ==}", true, true),
            ("client_certificate: {san_dns: {ends_with: .internal}}", true, true),
            (
                "client_certificate: {san_email: ops@example.com, san_uri: {starts_with: 'spiffe://cluster/'}}",
                true,
                true,
            ),
            ("client_certificate: {san_dns: other.internal}", false, false),
            ("invalid_client_certificate: true", false, false),
            ("cors_preflight: true", false, false),
            ("date: {after: '2026-01-01T00:00:00Z'}", true, true),
            ("date: {before: '2026-06-01T00:00:00Z'}", false, false),
            ("date: {after: '2026-12-01T12:00:00Z', before: '2026-12-01T13:00:00+00:00'}", true, true),
            ("day_of_week: mon-fri", true, true),
            ("day_of_week: 'sat,sun'", false, false),
            ("day_of_week: fri-mon", false, false),
            ("day_of_week: 'Tuesday'", true, true),
            ("day_of_week: {days: tue, timezone: Pacific/Kiritimati}", false, false),
            ("day_of_week: {days: wed, timezone: Pacific/Kiritimati}", true, true),
            ("time_of_day: {after: '09:00', before: '17:00'}", true, true),
            ("time_of_day: {after: '13:00', before: '14:00', timezone: Europe/Berlin}", true, true),
            ("time_of_day: {after: '13:00', before: '14:00'}", false, false),
            ("time_of_day: {after: '22:00', before: '06:00'}", false, false),
            ("time_of_day: {after: '12:00', before: '06:00'}", true, true),
            ("time_of_day: {before: '12:30'}", false, false),
            ("time_of_day: {after: '12:30'}", true, true),
        ];
        for (criterion, with_alice, anonymous) in table {
            let p = policy(&format!("allow: {{and: [{{{criterion}}}]}}"));
            let mut f = facts(Some(&a));
            f.client_cert = Some(&cert);
            assert_eq!(p.decide(&f) != Decision::NoMatch, *with_alice, "{criterion} with an identity");
            let mut f = facts(None);
            f.client_cert = Some(&cert);
            assert_eq!(p.decide(&f) != Decision::NoMatch, *anonymous, "{criterion} without one");
        }
        // Without a certificate, certificate criteria never match; the flags read the facts.
        let p = policy("allow: {or: [{client_certificate: {fingerprint: ab12}}]}");
        assert_eq!(p.decide(&facts(Some(&a))), Decision::NoMatch);
        let p = policy("allow: {or: [{invalid_client_certificate: true}, {cors_preflight: true}]}");
        let mut f = facts(None);
        f.cors_preflight = true;
        assert_eq!(p.decide(&f), Decision::Allow { rule: 0 });
        f.cors_preflight = false;
        f.invalid_client_cert = true;
        assert_eq!(p.decide(&f), Decision::Allow { rule: 0 });
    }

    #[test]
    fn deny_wins_and_the_first_matching_rule_is_named() {
        let a = alice();
        let p = policy(
            "
- allow: {or: [{email: nobody@example.com}]}
- allow: {or: [{domain: example.com}]}
- allow: {or: [{accept: true}]}
- deny: {or: [{http_method: DELETE}]}
",
        );
        assert_eq!(p.decide(&facts(Some(&a))), Decision::Allow { rule: 1 });
        let mut f = facts(Some(&a));
        f.method = "DELETE";
        assert_eq!(p.decide(&f), Decision::Deny { rule: 3 });
        assert_eq!(policy("deny: {or: [{reject: true}]}").decide(&f), Decision::NoMatch);
        // Several operators in one rule are OR-ed.
        let p = policy("allow: {and: [{reject: true}], or: [{accept: true}]}");
        assert_eq!(p.decide(&f), Decision::Allow { rule: 0 });
    }

    /// `not` is ¬A ∧ ¬B and `nor` is ¬A ∨ ¬B (Pomerium's meanings), for every combination of
    /// up to four criteria: the truth table in the module docs, exhaustively.
    #[test]
    fn operators_match_their_definitions() {
        let f = facts(None);
        for n in 0..=4u32 {
            for bits in 0..(1u32 << n) {
                let values: Vec<bool> = (0..n).map(|i| bits & (1 << i) != 0).collect();
                let criteria: Vec<Criterion> =
                    values.iter().map(|v| if *v { Criterion::Accept } else { Criterion::Reject }).collect();
                let all = values.iter().all(|v| *v);
                let any = values.iter().any(|v| *v);
                assert_eq!(Operator::And(criteria.clone()).matches(&f), all, "and {values:?}");
                assert_eq!(Operator::Or(criteria.clone()).matches(&f), any, "or {values:?}");
                assert_eq!(Operator::Not(criteria.clone()).matches(&f), values.iter().all(|v| !v), "not {values:?}");
                assert_eq!(Operator::Nor(criteria).matches(&f), values.iter().any(|v| !v), "nor {values:?}");
            }
        }
        // The table's rows for two criteria.
        let two = |a: bool, b: bool, op: fn(Vec<Criterion>) -> Operator| {
            let c = |v| if v { Criterion::Accept } else { Criterion::Reject };
            op(vec![c(a), c(b)]).matches(&f)
        };
        assert!(
            !two(true, true, Operator::Not) && !two(true, false, Operator::Not) && two(false, false, Operator::Not)
        );
        assert!(!two(true, true, Operator::Nor) && two(true, false, Operator::Nor) && two(false, false, Operator::Nor));
    }

    /// The reference model the exhaustive test checks `decide` against, written from the
    /// definitions rather than from `eval`: an operator over truth values, by its name.
    fn model_operator(op: &str, values: &[bool]) -> bool {
        match op {
            "and" => values.iter().all(|v| *v),
            "or" => values.iter().any(|v| *v),
            "not" => values.iter().all(|v| !v),
            "nor" => values.iter().any(|v| !v),
            other => unreachable!("{other}"),
        }
    }

    /// A property test without a property-testing crate: the space is small enough to walk
    /// whole. For every truth assignment of 1 to 4 criteria (`accept`/`reject`) and every
    /// policy of 1 to 3 rules, each `allow` or `deny` with any operator over those criteria,
    /// the policy is written as YAML and parsed (so the operator names are checked too, not
    /// only the evaluator), and `decide` must give the model's answer: the first matching
    /// deny if any (deny wins wherever it stands), else the first matching allow, else no
    /// match. Then every rule with two operators must match when either does (OR-ed).
    #[test]
    fn decide_matches_its_definition_exhaustively() {
        use std::fmt::Write as _;
        const OPS: [&str; 4] = ["and", "or", "not", "nor"];
        const ACTIONS: [&str; 2] = ["allow", "deny"];
        let f = facts(None);
        let mut checked = 0u32;
        for n in 1..=4u32 {
            for bits in 0..(1u32 << n) {
                let values: Vec<bool> = (0..n).map(|i| bits & (1 << i) != 0).collect();
                let criteria = values
                    .iter()
                    .map(|v| if *v { "{accept: true}" } else { "{reject: true}" })
                    .collect::<Vec<_>>()
                    .join(", ");
                for rules in 1..=3u32 {
                    // Each rule is one of 8 (action, operator) pairs: walk all 8^rules lists.
                    for code in 0..8u32.pow(rules) {
                        let picks: Vec<(&str, &str)> = (0..rules)
                            .map(|r| {
                                let k = (code / 8u32.pow(r)) % 8;
                                (ACTIONS[(k / 4) as usize], OPS[(k % 4) as usize])
                            })
                            .collect();
                        let mut yaml = String::new();
                        for (action, op) in &picks {
                            let _ = writeln!(yaml, "- {action}: {{{op}: [{criteria}]}}");
                        }
                        let matching = |want: &str| {
                            picks.iter().position(|(action, op)| *action == want && model_operator(op, &values))
                        };
                        let expected = match (matching("deny"), matching("allow")) {
                            (Some(rule), _) => Decision::Deny { rule },
                            (None, Some(rule)) => Decision::Allow { rule },
                            (None, None) => Decision::NoMatch,
                        };
                        assert_eq!(policy(&yaml).decide(&f), expected, "{values:?}\n{yaml}");
                        checked += 1;
                    }
                }
                for (i, a) in OPS.iter().enumerate() {
                    for b in &OPS[i + 1..] {
                        let p = policy(&format!("allow: {{{a}: [{criteria}], {b}: [{criteria}]}}"));
                        let either = model_operator(a, &values) || model_operator(b, &values);
                        assert_eq!(p.decide(&f) != Decision::NoMatch, either, "{a} or {b} over {values:?}");
                    }
                }
            }
        }
        // 30 assignments times 8 + 64 + 512 policies each.
        assert_eq!(checked, 30 * (8 + 64 + 512));
    }
}
