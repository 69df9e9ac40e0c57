//! Pomerium's shorthand route keys, as the allow rules they stand for:
//! `allow_public_unauthenticated_access`, `allow_any_authenticated_user`, `allowed_users`,
//! `allowed_domains`, `allowed_idp_claims`. They add to a route's `policy` (each is one more
//! allow rule), so a deny rule of the policy still wins over them.

use std::collections::BTreeMap;

use super::{Action, Criterion, Operator, Rule, StringMatcher, StringTest};

/// The shorthand keys of one route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shorthand {
    /// `allow_public_unauthenticated_access: true`: everyone.
    pub public: bool,
    /// `allow_any_authenticated_user: true`: anyone with a verified identity.
    pub any_authenticated_user: bool,
    /// `allowed_users`: a user id (`sub`) or an email address, as Pomerium reads them.
    pub users: Vec<String>,
    /// `allowed_domains`: the domain of the email address.
    pub domains: Vec<String>,
    /// `allowed_idp_claims`: a claim and the values any one of which admits.
    pub idp_claims: BTreeMap<String, Vec<String>>,
}

impl Shorthand {
    /// Whether any key is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The allow rules the keys stand for, in the order above.
    pub fn rules(&self) -> Vec<Rule> {
        let allow = |criteria: Vec<Criterion>| Rule { action: Action::Allow, operators: vec![Operator::Or(criteria)] };
        let is = |v: &str| StringMatcher(vec![StringTest::Is(v.to_owned())]);
        let mut rules = Vec::new();
        if self.public {
            rules.push(allow(vec![Criterion::Accept]));
        }
        if self.any_authenticated_user {
            rules.push(allow(vec![Criterion::AuthenticatedUser]));
        }
        if !self.users.is_empty() {
            rules.push(allow(
                self.users.iter().flat_map(|u| [Criterion::User(is(u)), Criterion::Email(is(u))]).collect(),
            ));
        }
        if !self.domains.is_empty() {
            rules.push(allow(self.domains.iter().map(|d| Criterion::Domain(is(d))).collect()));
        }
        if !self.idp_claims.is_empty() {
            rules.push(allow(
                self.idp_claims
                    .iter()
                    .flat_map(|(name, values)| {
                        values.iter().map(|v| Criterion::Claim { name: name.clone(), matcher: is(v) })
                    })
                    .collect(),
            ));
        }
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::super::eval::{Decision, Facts, Identity};
    use super::super::Policy;
    use super::*;

    fn decide(s: &Shorthand, identity: Option<&Identity>) -> Decision {
        let facts = Facts {
            identity,
            method: "GET",
            path: "/",
            source_ip: "127.0.0.1".parse().unwrap(),
            client_cert: None,
            invalid_client_cert: false,
            cors_preflight: false,
            now: jiff::Timestamp::UNIX_EPOCH,
        };
        Policy { rules: s.rules() }.decide(&facts)
    }

    #[test]
    fn each_key_admits_what_pomerium_admits() {
        let bob = Identity {
            subject: Some("u-2".into()),
            email: Some("bob@corp.example".into()),
            groups: vec![],
            claims: serde_json::json!({"org": "acme", "tier": ["gold"]}).as_object().unwrap().clone(),
        };
        assert!(Shorthand::default().is_empty());
        assert_eq!(decide(&Shorthand::default(), Some(&bob)), Decision::NoMatch);
        let public = Shorthand { public: true, ..Shorthand::default() };
        assert_eq!(decide(&public, None), Decision::Allow { rule: 0 });
        let any = Shorthand { any_authenticated_user: true, ..Shorthand::default() };
        assert_eq!(decide(&any, None), Decision::NoMatch);
        assert_eq!(decide(&any, Some(&bob)), Decision::Allow { rule: 0 });
        for users in [vec!["u-2".to_owned()], vec!["bob@corp.example".to_owned()]] {
            let s = Shorthand { users, ..Shorthand::default() };
            assert_eq!(decide(&s, Some(&bob)), Decision::Allow { rule: 0 });
        }
        let s = Shorthand { users: vec!["u-3".into()], ..Shorthand::default() };
        assert_eq!(decide(&s, Some(&bob)), Decision::NoMatch);
        let s = Shorthand { domains: vec!["corp.example".into()], ..Shorthand::default() };
        assert_eq!(decide(&s, Some(&bob)), Decision::Allow { rule: 0 });
        let claims = |k: &str, v: &str| Shorthand {
            idp_claims: [(k.to_owned(), vec!["x".to_owned(), v.to_owned()])].into_iter().collect(),
            ..Shorthand::default()
        };
        assert_eq!(decide(&claims("org", "acme"), Some(&bob)), Decision::Allow { rule: 0 });
        assert_eq!(decide(&claims("tier", "gold"), Some(&bob)), Decision::Allow { rule: 0 });
        assert_eq!(decide(&claims("org", "other"), Some(&bob)), Decision::NoMatch);
        // Several keys: one rule each, in order.
        let both =
            Shorthand { any_authenticated_user: true, domains: vec!["corp.example".into()], ..Shorthand::default() };
        assert_eq!(both.rules().len(), 2);
    }
}
