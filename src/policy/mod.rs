//! Access policy: Pomerium's Policy Language (PPL), so Pomerium users carry their policies
//! over. Pure domain logic: [`parse`] turns a policy's tree (YAML in a file, a Route's
//! `spec.policy`, the `portcullis.io/policy` annotation) into a [`Policy`], reporting every
//! error with its path; [`eval`] decides a request against it. Nothing here does I/O or knows
//! where the facts came from.
//!
//! A policy is a list of rules; a rule is `allow` or `deny` with operators (`and`, `or`,
//! `not`, `nor`), each a list of criteria; several operators in one rule are OR-ed. Access is
//! granted when at least one allow rule matches and no deny rule does (deny wins). Pomerium's
//! meanings are kept exactly, odd as two of them are:
//!
//! | operator | matches when | A, B = true, true | true, false | false, false |
//! |---|---|---|---|---|
//! | `and` | every criterion matches | yes | no | no |
//! | `or`  | some criterion matches  | yes | yes | no |
//! | `not` | no criterion matches (¬A ∧ ¬B) | no | no | yes |
//! | `nor` | not every criterion matches (¬A ∨ ¬B) | no | yes | yes |

pub mod eval;
pub mod net;
pub mod parse;
pub mod shorthand;

use net::IpNet;

/// A route's access policy: its rules in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The rules; their indexes are what the access log names.
    pub rules: Vec<Rule>,
}

/// One `allow` or `deny` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// What the rule does when it matches.
    pub action: Action,
    /// Its operators, OR-ed: the rule matches when one of them does.
    pub operators: Vec<Operator>,
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Grants access (unless a deny rule matches too).
    Allow,
    /// Refuses access, whatever else matches.
    Deny,
}

/// An operator over a list of criteria (see the table in the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operator {
    /// Every criterion matches.
    And(Vec<Criterion>),
    /// Some criterion matches.
    Or(Vec<Criterion>),
    /// No criterion matches.
    Not(Vec<Criterion>),
    /// Not every criterion matches.
    Nor(Vec<Criterion>),
}

/// One fact about a request that a rule can test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Criterion {
    /// Always matches.
    Accept,
    /// Never matches.
    Reject,
    /// The request carries a verified identity.
    AuthenticatedUser,
    /// The identity's `email` claim.
    Email(StringMatcher),
    /// The domain of the identity's `email` claim.
    Domain(StringMatcher),
    /// The identity's subject (`sub`).
    User(StringMatcher),
    /// A claim of the identity (`claim/<name>`): a string, or any string of a list.
    Claim {
        /// The claim's name.
        name: String,
        /// What its value must match.
        matcher: StringMatcher,
    },
    /// The identity's groups (its `groups` claim).
    Groups(ListMatcher),
    /// The request's method.
    HttpMethod(StringMatcher),
    /// The request's path.
    HttpPath(StringMatcher),
    /// The client's address is in one of these networks.
    SourceIp(Vec<IpNet>),
    /// The connection's verified client certificate.
    ClientCertificate(CertMatcher),
    /// The client presented a certificate that did not verify.
    InvalidClientCertificate,
    /// The request is a CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`).
    CorsPreflight,
    /// The request comes after `after` and before `before` (either may be open).
    Date {
        /// Exclusive lower bound.
        after: Option<jiff::Timestamp>,
        /// Exclusive upper bound.
        before: Option<jiff::Timestamp>,
    },
    /// The request comes on one of these days in a time zone.
    DayOfWeek {
        /// Monday first.
        days: [bool; 7],
        /// Where the days are counted.
        zone: Zone,
    },
    /// The request comes between two times of day in a time zone: `after` inclusive,
    /// `before` exclusive; when `after` is later than `before` the span wraps midnight.
    TimeOfDay {
        /// From this time (open when absent).
        after: Option<jiff::civil::Time>,
        /// Until this time (open when absent).
        before: Option<jiff::civil::Time>,
        /// Where the times are read.
        zone: Zone,
    },
}

/// An IANA time zone (from the bundled database: the container image has none of its own),
/// named as the policy named it.
#[derive(Clone, Debug)]
pub struct Zone {
    /// The name given (`Europe/Berlin`, `UTC`).
    pub name: String,
    /// The zone.
    pub tz: jiff::tz::TimeZone,
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Zone {}

impl Zone {
    /// UTC, the default.
    pub fn utc() -> Self {
        Self { name: "UTC".to_owned(), tz: jiff::tz::TimeZone::UTC }
    }
}

/// String tests, all of which must hold (a bare value in a policy is `is`). Pomerium's
/// operators (`is`, `not`, `starts_with`, `ends_with`, `contains`, `in`) and `not_in`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StringMatcher(pub Vec<StringTest>);

/// One string test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StringTest {
    /// Equal.
    Is(String),
    /// Starts with.
    StartsWith(String),
    /// Ends with.
    EndsWith(String),
    /// Contains.
    Contains(String),
    /// Equal to one of these.
    In(Vec<String>),
    /// Equal to none of these.
    NotIn(Vec<String>),
    /// Not equal (Pomerium's `not`).
    Not(String),
}

/// List tests, all of which must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListMatcher(pub Vec<ListTest>);

/// One list test (Pomerium's list matchers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListTest {
    /// The list holds this value.
    Has(String),
    /// The list is exactly this one value.
    Is(String),
    /// The list does not hold this value.
    Exclude(String),
}

/// Tests of the verified client certificate, all of which must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertMatcher {
    /// SHA-256 of the certificate (hex, lower case), one of these.
    pub fingerprint: Vec<String>,
    /// SHA-256 of its SubjectPublicKeyInfo (base64), one of these.
    pub spki_hash: Vec<String>,
    /// A DNS name among its subject alternative names matches.
    pub san_dns: Option<StringMatcher>,
    /// An email address among its subject alternative names matches.
    pub san_email: Option<StringMatcher>,
    /// A URI among its subject alternative names matches.
    pub san_uri: Option<StringMatcher>,
}
