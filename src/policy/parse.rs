//! A policy's tree (YAML or JSON: a file's `policy`, a Route's `spec.policy`, the
//! `portcullis.io/policy` annotation) into a [`Policy`], every error reported with its path:
//! `routes[2].policy[0].allow.and[1].email: unknown operator "eq"`.

use serde_json::{Map, Value};

use super::net::IpNet;
use super::{
    Action, CertMatcher, Criterion, ListMatcher, ListTest, Operator, Policy, Rule, StringMatcher, StringTest, Zone,
};
use crate::config::errors::Errors;

/// Parses the policy at `at` (one rule, or a list of rules). `None` when anything is wrong
/// (every problem is in `errs`).
pub fn policy(at: &str, v: &Value, errs: &mut Errors) -> Option<Policy> {
    let before = errs.len();
    let mut rules = Vec::new();
    match v {
        Value::Array(items) => {
            if items.is_empty() {
                errs.push(at, "is empty: give at least one allow or deny rule");
            }
            for (i, item) in items.iter().enumerate() {
                rule(&format!("{at}[{i}]"), item, &mut rules, errs);
            }
        }
        Value::Object(_) => rule(at, v, &mut rules, errs),
        other => errs.push(at, format!("expected a rule or a list of rules, found {}", kind(other))),
    }
    (errs.len() == before).then_some(Policy { rules })
}

fn rule(at: &str, v: &Value, out: &mut Vec<Rule>, errs: &mut Errors) {
    let Some(map) = object(at, v, errs) else { return };
    if map.is_empty() {
        errs.push(at, "is empty: give allow or deny");
    }
    for (key, body) in map {
        let action = match key.as_str() {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            other => {
                errs.push(format!("{at}.{other}"), format!("unknown action {other:?}: use allow or deny"));
                continue;
            }
        };
        let at = format!("{at}.{key}");
        let Some(ops) = object(&at, body, errs) else { continue };
        if ops.is_empty() {
            errs.push(&at, "is empty: give and, or, not or nor");
        }
        let mut operators = Vec::new();
        for (op, criteria) in ops {
            let at = format!("{at}.{op}");
            let make: fn(Vec<Criterion>) -> Operator = match op.as_str() {
                "and" => Operator::And,
                "or" => Operator::Or,
                "not" => Operator::Not,
                "nor" => Operator::Nor,
                other => {
                    errs.push(&at, format!("unknown operator {other:?}: use and, or, not or nor"));
                    continue;
                }
            };
            let Value::Array(items) = criteria else {
                errs.push(&at, format!("expected a list of criteria, found {}", kind(criteria)));
                continue;
            };
            if items.is_empty() {
                // Under Pomerium's meanings `and: []` and `not: []` match every request: as
                // likely a mistake as an intent, and in an allow rule it opens the route.
                errs.push(&at, "is empty: give at least one criterion (use accept: true to match every request)");
                continue;
            }
            let list =
                items.iter().enumerate().filter_map(|(i, c)| criterion(&format!("{at}[{i}]"), c, errs)).collect();
            operators.push(make(list));
        }
        out.push(Rule { action, operators });
    }
}

fn criterion(at: &str, v: &Value, errs: &mut Errors) -> Option<Criterion> {
    let map = object(at, v, errs)?;
    let mut entries = map.iter();
    let (Some((name, value)), None) = (entries.next(), entries.next()) else {
        errs.push(at, "a criterion is a mapping with exactly one key, such as {email: {is: user@example.com}}");
        return None;
    };
    let at = format!("{at}.{name}");
    let at = at.as_str();
    let c = match name.as_str() {
        "accept" => flag(at, value, errs).map(|()| Criterion::Accept)?,
        "reject" => flag(at, value, errs).map(|()| Criterion::Reject)?,
        "authenticated_user" => flag(at, value, errs).map(|()| Criterion::AuthenticatedUser)?,
        "invalid_client_certificate" => flag(at, value, errs).map(|()| Criterion::InvalidClientCertificate)?,
        "cors_preflight" => flag(at, value, errs).map(|()| Criterion::CorsPreflight)?,
        "email" => Criterion::Email(string_matcher(at, value, errs)?),
        "domain" => Criterion::Domain(string_matcher(at, value, errs)?),
        "user" => Criterion::User(string_matcher(at, value, errs)?),
        "http_method" => Criterion::HttpMethod(string_matcher(at, value, errs)?),
        "http_path" => Criterion::HttpPath(string_matcher(at, value, errs)?),
        "groups" => Criterion::Groups(list_matcher(at, value, errs)?),
        "source_ip" => Criterion::SourceIp(networks(at, value, errs)?),
        "client_certificate" => Criterion::ClientCertificate(cert_matcher(at, value, errs)?),
        "date" => date(at, value, errs)?,
        "day_of_week" => day_of_week(at, value, errs)?,
        "time_of_day" => time_of_day(at, value, errs)?,
        claim if claim.starts_with("claim/") => {
            let claim = &claim["claim/".len()..];
            if claim.is_empty() {
                errs.push(at, "name the claim: claim/<name>");
                return None;
            }
            Criterion::Claim { name: claim.to_owned(), matcher: string_matcher(at, value, errs)? }
        }
        other => {
            errs.push(at, format!("unknown criterion {other:?}"));
            return None;
        }
    };
    Some(c)
}

/// `accept: true` and the like: `true` is the only value that makes sense.
fn flag(at: &str, v: &Value, errs: &mut Errors) -> Option<()> {
    if v == &Value::Bool(true) {
        Some(())
    } else {
        errs.push(at, format!("expected true, found {}", kind(v)));
        None
    }
}

/// A string matcher: a bare value (`is`), or a mapping of tests that must all hold.
fn string_matcher(at: &str, v: &Value, errs: &mut Errors) -> Option<StringMatcher> {
    let map = match v {
        Value::String(s) => return Some(StringMatcher(vec![StringTest::Is(s.clone())])),
        Value::Object(m) => m,
        other => {
            errs.push(
                at,
                format!(
                    "expected a string or a mapping of is/starts_with/ends_with/contains/in/not_in, found {}",
                    kind(other)
                ),
            );
            return None;
        }
    };
    if map.is_empty() {
        errs.push(at, "is empty: give is, starts_with, ends_with, contains, in or not_in");
        return None;
    }
    let before = errs.len();
    let mut tests = Vec::new();
    for (op, value) in map {
        let one = |errs: &mut Errors| -> Option<String> {
            match value {
                Value::String(s) => Some(s.clone()),
                other => {
                    errs.push(at, format!("{op}: expected a string, found {}", kind(other)));
                    None
                }
            }
        };
        let test = match op.as_str() {
            "is" => one(errs).map(StringTest::Is),
            "starts_with" => one(errs).map(StringTest::StartsWith),
            "ends_with" => one(errs).map(StringTest::EndsWith),
            "contains" => one(errs).map(StringTest::Contains),
            "in" => strings(at, op, value, errs).map(StringTest::In),
            "not_in" => strings(at, op, value, errs).map(StringTest::NotIn),
            "not" => one(errs).map(StringTest::Not),
            other => {
                errs.push(
                    at,
                    format!("unknown operator {other:?}: use is, not, starts_with, ends_with, contains, in or not_in"),
                );
                None
            }
        };
        tests.extend(test);
    }
    (errs.len() == before).then_some(StringMatcher(tests))
}

/// A list matcher: a bare value (`has`), or a mapping of `has`, `is` (the only value),
/// `exclude`, all of which must hold.
fn list_matcher(at: &str, v: &Value, errs: &mut Errors) -> Option<ListMatcher> {
    let map = match v {
        Value::String(s) => return Some(ListMatcher(vec![ListTest::Has(s.clone())])),
        Value::Object(m) => m,
        other => {
            errs.push(at, format!("expected a string or a mapping such as {{has: admins}}, found {}", kind(other)));
            return None;
        }
    };
    if map.is_empty() {
        errs.push(at, "is empty: give has, is or exclude");
        return None;
    }
    let before = errs.len();
    let mut tests = Vec::new();
    for (op, value) in map {
        let make: fn(String) -> ListTest = match op.as_str() {
            "has" => ListTest::Has,
            "is" => ListTest::Is,
            "exclude" => ListTest::Exclude,
            other => {
                errs.push(at, format!("unknown operator {other:?}: use has, is or exclude"));
                continue;
            }
        };
        match value {
            Value::String(s) => tests.push(make(s.clone())),
            other => errs.push(at, format!("{op}: expected a string, found {}", kind(other))),
        }
    }
    (errs.len() == before).then_some(ListMatcher(tests))
}

fn networks(at: &str, v: &Value, errs: &mut Errors) -> Option<Vec<IpNet>> {
    let items: Vec<&Value> = match v {
        Value::Array(items) if !items.is_empty() => items.iter().collect(),
        Value::Array(_) => {
            errs.push(at, "is empty: give an IP address or CIDR, or a list of them");
            return None;
        }
        other => vec![other],
    };
    let before = errs.len();
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let item_at = if v.is_array() { format!("{at}[{i}]") } else { at.to_owned() };
        match item.as_str().map(str::parse::<IpNet>) {
            Some(Ok(n)) => out.push(n),
            Some(Err(e)) => errs.push(item_at, e),
            None => errs.push(item_at, format!("expected an IP address or CIDR, found {}", kind(item))),
        }
    }
    (errs.len() == before).then_some(out)
}

fn cert_matcher(at: &str, v: &Value, errs: &mut Errors) -> Option<CertMatcher> {
    let map = object(at, v, errs)?;
    if map.is_empty() {
        errs.push(at, "is empty: give fingerprint, spki_hash, san_dns, san_email or san_uri");
        return None;
    }
    let before = errs.len();
    let mut m = CertMatcher::default();
    for (key, value) in map {
        let key_at = format!("{at}.{key}");
        match key.as_str() {
            "fingerprint" => {
                m.fingerprint = one_or_many(&key_at, value, errs)
                    .into_iter()
                    .map(|f| f.to_ascii_lowercase().replace(':', ""))
                    .collect();
            }
            "spki_hash" => m.spki_hash = one_or_many(&key_at, value, errs),
            "san_dns" => m.san_dns = string_matcher(&key_at, value, errs),
            "san_email" => m.san_email = string_matcher(&key_at, value, errs),
            "san_uri" => m.san_uri = string_matcher(&key_at, value, errs),
            other => errs.push(
                key_at,
                format!(
                    "unknown certificate test {other:?}: use fingerprint, spki_hash, san_dns, san_email or san_uri"
                ),
            ),
        }
    }
    (errs.len() == before).then_some(m)
}

/// `date: {after: 2026-01-01T00:00:00Z, before: ...}` (RFC 3339, either or both).
fn date(at: &str, v: &Value, errs: &mut Errors) -> Option<Criterion> {
    let map = object(at, v, errs)?;
    let before_errs = errs.len();
    let (mut after, mut before) = (None, None);
    for (key, value) in map {
        let slot = match key.as_str() {
            "after" => &mut after,
            "before" => &mut before,
            other => {
                errs.push(format!("{at}.{other}"), "unknown key: use after or before");
                continue;
            }
        };
        match value.as_str().map(str::parse::<jiff::Timestamp>) {
            Some(Ok(t)) => *slot = Some(t),
            _ => errs.push(format!("{at}.{key}"), "expected an RFC 3339 time such as 2026-01-01T00:00:00Z"),
        }
    }
    if after.is_none() && before.is_none() && errs.len() == before_errs {
        errs.push(at, "give after, before or both");
    }
    if let (Some(a), Some(b)) = (after, before) {
        if a >= b {
            errs.push(at, "after must be earlier than before");
        }
    }
    (errs.len() == before_errs).then_some(Criterion::Date { after, before })
}

/// `day_of_week: mon-fri` (days and ranges, comma-separated; a range may wrap: `fri-mon`), or
/// `{days: ..., timezone: Europe/Berlin}`.
fn day_of_week(at: &str, v: &Value, errs: &mut Errors) -> Option<Criterion> {
    let before_errs = errs.len();
    let (days_text, zone) = match v {
        Value::String(s) => (Some(s.as_str()), Some(Zone::utc())),
        Value::Object(map) => {
            let mut days = None;
            let mut zone = Some(Zone::utc());
            for (key, value) in map {
                match key.as_str() {
                    "days" => {
                        days = value.as_str();
                        if days.is_none() {
                            errs.push(format!("{at}.days"), "expected days such as mon-fri or sat,sun");
                        }
                    }
                    "timezone" => zone = timezone(&format!("{at}.timezone"), value, errs),
                    other => errs.push(format!("{at}.{other}"), "unknown key: use days or timezone"),
                }
            }
            if days.is_none() && errs.len() == before_errs {
                errs.push(at, "give days, such as mon-fri");
            }
            (days, zone)
        }
        other => {
            errs.push(at, format!("expected days such as mon-fri, or {{days, timezone}}, found {}", kind(other)));
            return None;
        }
    };
    let days = match days_text.map(parse_days) {
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            errs.push(if v.is_object() { format!("{at}.days") } else { at.to_owned() }, e);
            None
        }
        None => None,
    };
    match (days, zone) {
        (Some(days), Some(zone)) if errs.len() == before_errs => Some(Criterion::DayOfWeek { days, zone }),
        _ => None,
    }
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day(name: &str) -> Result<usize, String> {
    let lower = name.trim().to_ascii_lowercase();
    DAYS.iter()
        .position(|d| lower == *d || (lower.len() > 3 && lower.starts_with(d) && full_day(d) == lower))
        .ok_or_else(|| format!("{name:?} is not a day: use mon, tue, wed, thu, fri, sat or sun"))
}

fn full_day(short: &str) -> &'static str {
    match short {
        "mon" => "monday",
        "tue" => "tuesday",
        "wed" => "wednesday",
        "thu" => "thursday",
        "fri" => "friday",
        "sat" => "saturday",
        _ => "sunday",
    }
}

fn parse_days(text: &str) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    for part in text.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (day(from)?, day(to)?);
                let mut d = from;
                loop {
                    days[d] = true;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[day(part)?] = true,
        }
    }
    Ok(days)
}

/// `time_of_day: {after: "09:00", before: "17:00", timezone: Europe/Berlin}`.
fn time_of_day(at: &str, v: &Value, errs: &mut Errors) -> Option<Criterion> {
    let map = object(at, v, errs)?;
    let before_errs = errs.len();
    let (mut after, mut before, mut zone) = (None, None, Some(Zone::utc()));
    for (key, value) in map {
        let slot = match key.as_str() {
            "after" => &mut after,
            "before" => &mut before,
            "timezone" => {
                zone = timezone(&format!("{at}.timezone"), value, errs);
                continue;
            }
            other => {
                errs.push(format!("{at}.{other}"), "unknown key: use after, before or timezone");
                continue;
            }
        };
        match value.as_str().map(str::parse::<jiff::civil::Time>) {
            Some(Ok(t)) => *slot = Some(t),
            _ => errs.push(format!("{at}.{key}"), "expected a time of day such as 09:00 or 17:30:00"),
        }
    }
    if after.is_none() && before.is_none() && errs.len() == before_errs {
        errs.push(at, "give after, before or both");
    }
    match zone {
        Some(zone) if errs.len() == before_errs => Some(Criterion::TimeOfDay { after, before, zone }),
        _ => None,
    }
}

fn timezone(at: &str, v: &Value, errs: &mut Errors) -> Option<Zone> {
    let Some(name) = v.as_str() else {
        errs.push(at, format!("expected an IANA time zone such as Europe/Berlin, found {}", kind(v)));
        return None;
    };
    if let Ok(tz) = jiff::tz::TimeZone::get(name) {
        Some(Zone { name: name.to_owned(), tz })
    } else {
        errs.push(at, format!("unknown time zone {name:?}: use an IANA name such as Europe/Berlin or UTC"));
        None
    }
}

fn one_or_many(at: &str, v: &Value, errs: &mut Errors) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(_) => strings(at, "", v, errs).unwrap_or_default(),
        other => {
            errs.push(at, format!("expected a string or a list of strings, found {}", kind(other)));
            Vec::new()
        }
    }
}

fn strings(at: &str, op: &str, v: &Value, errs: &mut Errors) -> Option<Vec<String>> {
    let label = if op.is_empty() { String::new() } else { format!("{op}: ") };
    let Value::Array(items) = v else {
        errs.push(at, format!("{label}expected a list of strings, found {}", kind(v)));
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::String(s) => out.push(s.clone()),
            other => {
                errs.push(at, format!("{label}expected a list of strings, found an item that is {}", kind(other)));
                return None;
            }
        }
    }
    Some(out)
}

fn object<'v>(at: &str, v: &'v Value, errs: &mut Errors) -> Option<&'v Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        other => {
            errs.push(at, format!("expected a mapping, found {}", kind(other)));
            None
        }
    }
}

use crate::config::errors::value_kind as kind;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Policy, Vec<String>> {
        let v: Value = serde_yaml_ng::from_str(yaml).unwrap();
        let mut errs = Errors::default();
        policy("routes[2].policy", &v, &mut errs)
            .ok_or_else(|| errs.into_vec().into_iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn a_list_of_rules_with_every_operator() {
        let p = parse(
            r#"
- allow:
    and:
      - email: {ends_with: "@example.com"}
      - http_method: {in: [GET, HEAD]}
    or:
      - groups: {has: admins}
- deny:
    not:
      - source_ip: [10.0.0.0/8, "::1"]
    nor:
      - claim/department: eng
      - client_certificate: {fingerprint: "AB:CD", san_dns: {ends_with: .internal}}
"#,
        )
        .unwrap();
        assert_eq!(p.rules.len(), 2);
        assert_eq!(p.rules[0].action, Action::Allow);
        assert_eq!(p.rules[0].operators.len(), 2);
        assert_eq!(
            p.rules[0].operators[0],
            Operator::And(vec![
                Criterion::Email(StringMatcher(vec![StringTest::EndsWith("@example.com".into())])),
                Criterion::HttpMethod(StringMatcher(vec![StringTest::In(vec!["GET".into(), "HEAD".into()])])),
            ])
        );
        // A mapping's keys are read in sorted order (`nor` before `not`); operators are OR-ed,
        // so their order does not matter.
        let Operator::Nor(nor) = &p.rules[1].operators[0] else { panic!("{:?}", p.rules[1]) };
        assert!(matches!(&p.rules[1].operators[1], Operator::Not(n) if n.len() == 1));
        assert_eq!(
            nor[0],
            Criterion::Claim { name: "department".into(), matcher: StringMatcher(vec![StringTest::Is("eng".into())]) }
        );
        let Criterion::ClientCertificate(c) = &nor[1] else { panic!() };
        assert_eq!(c.fingerprint, ["abcd"]);
    }

    #[test]
    fn one_rule_without_a_list() {
        let p = parse("allow: {or: [{accept: true}]}").unwrap();
        assert_eq!(p.rules, [Rule { action: Action::Allow, operators: vec![Operator::Or(vec![Criterion::Accept])] }]);
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let errs = parse(
            r"
- allow:
    and:
      - email: {is: a@example.com}
      - email: {eq: x}
      - nope: true
- permit: {}
- deny:
    xor: []
    or:
      - source_ip: 10.0.0.0/33
      - accept: false
      - claim/: x
      - {email: a, user: b}
",
        )
        .unwrap_err();
        let expected = [
            r#"routes[2].policy[0].allow.and[1].email: unknown operator "eq": use is, not, starts_with, ends_with, contains, in or not_in"#,
            r#"routes[2].policy[0].allow.and[2].nope: unknown criterion "nope""#,
            r#"routes[2].policy[1].permit: unknown action "permit": use allow or deny"#,
            r#"routes[2].policy[2].deny.or[0].source_ip: "10.0.0.0/33": the prefix length must be 0 to 32"#,
            r"routes[2].policy[2].deny.or[1].accept: expected true, found a boolean",
            r"routes[2].policy[2].deny.or[2].claim/: name the claim: claim/<name>",
            r"routes[2].policy[2].deny.or[3]: a criterion is a mapping with exactly one key, such as {email: {is: user@example.com}}",
            // Keys of one mapping come in sorted order: `or` before `xor`.
            r#"routes[2].policy[2].deny.xor: unknown operator "xor": use and, or, not or nor"#,
        ];
        assert_eq!(errs, expected);
    }

    #[test]
    fn an_empty_operator_is_an_error_not_a_match_all() {
        assert_eq!(
            parse("- allow: {not: []}\n- deny: {and: [{reject: true}], or: []}").unwrap_err(),
            [
                "routes[2].policy[0].allow.not: is empty: give at least one criterion (use accept: true to match every request)",
                "routes[2].policy[1].deny.or: is empty: give at least one criterion (use accept: true to match every request)",
            ]
        );
    }

    #[test]
    fn time_criteria_errors() {
        let errs = parse(
            r"
allow:
  or:
    - date: {after: yesterday}
    - date: {after: '2026-02-01T00:00:00Z', before: '2026-01-01T00:00:00Z'}
    - date: {}
    - day_of_week: mon-funday
    - day_of_week: {days: mon, timezone: Mars/Olympus}
    - time_of_day: {after: '25:00'}
    - time_of_day: {at: '10:00'}
",
        )
        .unwrap_err();
        assert_eq!(
            errs,
            [
                "routes[2].policy.allow.or[0].date.after: expected an RFC 3339 time such as 2026-01-01T00:00:00Z",
                "routes[2].policy.allow.or[1].date: after must be earlier than before",
                "routes[2].policy.allow.or[2].date: give after, before or both",
                r#"routes[2].policy.allow.or[3].day_of_week: "funday" is not a day: use mon, tue, wed, thu, fri, sat or sun"#,
                r#"routes[2].policy.allow.or[4].day_of_week.timezone: unknown time zone "Mars/Olympus": use an IANA name such as Europe/Berlin or UTC"#,
                "routes[2].policy.allow.or[5].time_of_day.after: expected a time of day such as 09:00 or 17:30:00",
                "routes[2].policy.allow.or[6].time_of_day.at: unknown key: use after, before or timezone",
            ]
        );
    }

    #[test]
    fn shapes_that_are_not_policies() {
        assert_eq!(parse("[]").unwrap_err(), ["routes[2].policy: is empty: give at least one allow or deny rule"]);
        assert_eq!(
            parse("allow").unwrap_err(),
            ["routes[2].policy: expected a rule or a list of rules, found a string"]
        );
        assert_eq!(parse("allow: {}").unwrap_err(), ["routes[2].policy.allow: is empty: give and, or, not or nor"]);
        assert_eq!(
            parse("allow: {and: {email: a}}").unwrap_err(),
            ["routes[2].policy.allow.and: expected a list of criteria, found a mapping"]
        );
    }
}
