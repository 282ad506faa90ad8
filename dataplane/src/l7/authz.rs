//! Request-level authorization on HTTP ports: the evaluator of a
//! connection's RequestPolicy (shared/proto/dataplane.proto), which the agent
//! compiles when it admits the connection (shared/authorization.ts) and
//! replaces on a policy change. The semantics are defined once, in
//! shared/authorization-http.ts; this is the same algorithm over the same
//! values, and test/shared/authorization-http-vectors.json holds cases both are
//! tested against.
use crate::control::pb;

/// Istio's string match; "*" (`Any`) matches any non-empty value.
#[derive(Debug, Clone)]
enum Match {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Any,
}

impl Match {
    fn from_pb(m: &pb::StringMatch) -> Self {
        match pb::MatchKind::try_from(m.kind) {
            Ok(pb::MatchKind::Prefix) => Match::Prefix(m.value.clone()),
            Ok(pb::MatchKind::Suffix) => Match::Suffix(m.value.clone()),
            Ok(pb::MatchKind::Any) => Match::Any,
            // An unknown kind (an agent of another version) compares exactly:
            // never broader than what was meant.
            _ => Match::Exact(m.value.clone()),
        }
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            Match::Exact(x) => v == x,
            Match::Prefix(x) => v.starts_with(x.as_str()),
            Match::Suffix(x) => v.ends_with(x.as_str()),
            Match::Any => !v.is_empty(),
        }
    }
}

fn any_matches(list: &[Match], v: Option<&str>) -> bool {
    v.is_some_and(|v| list.iter().any(|m| m.matches(v)))
}

#[derive(Debug, Clone, Default)]
struct Operation {
    methods: Vec<Match>,
    not_methods: Vec<Match>,
    paths: Vec<Match>,
    not_paths: Vec<Match>,
    hosts: Vec<Match>,
    not_hosts: Vec<Match>,
}

impl Operation {
    fn from_pb(o: &pb::HttpOperation) -> Self {
        let list = |l: &[pb::StringMatch]| l.iter().map(Match::from_pb).collect();
        Operation {
            methods: list(&o.methods),
            not_methods: list(&o.not_methods),
            paths: list(&o.paths),
            not_paths: list(&o.not_paths),
            hosts: list(&o.hosts),
            not_hosts: list(&o.not_hosts),
        }
    }

    /// Every field given matches; a `not` field, none of its values.
    fn matches(&self, r: &Request<'_>) -> bool {
        let field = |yes: &[Match], no: &[Match], v: Option<&str>| (yes.is_empty() || any_matches(yes, v)) && (no.is_empty() || !any_matches(no, v));
        field(&self.methods, &self.not_methods, Some(r.method)) && field(&self.paths, &self.not_paths, Some(r.path)) && field(&self.hosts, &self.not_hosts, r.host)
    }
}

#[derive(Debug, Clone)]
struct Policy {
    name: String,
    operations: Vec<Operation>,
}

impl Policy {
    fn matches(&self, r: &Request<'_>) -> bool {
        self.operations.iter().any(|o| o.matches(r))
    }
}

/// What is left to authorize per request on one connection.
#[derive(Debug, Clone, Default)]
pub struct RequestPolicy {
    deny: Vec<Policy>,
    allow: Vec<Policy>,
    allow_required: bool,
}

/// A request as the policy reads it: `path` already normalised (normalize_path), `host` lower-cased.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub host: Option<&'a str>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    Allowed,
    /// `policy`: the deciding DENY's "<namespace>/<name>"; None when no ALLOW matched.
    Denied { policy: Option<&'a str>, reason: &'static str },
}

impl RequestPolicy {
    pub fn from_pb(p: &pb::RequestPolicy) -> Self {
        let policies = |l: &[pb::HttpPolicy]| l.iter().map(|p| Policy { name: p.name.clone(), operations: p.operations.iter().map(Operation::from_pb).collect() }).collect();
        RequestPolicy { deny: policies(&p.deny), allow: policies(&p.allow), allow_required: p.allow_required }
    }

    /// Whether any request could be denied (otherwise nothing is evaluated).
    pub fn decides(&self) -> bool {
        !self.deny.is_empty() || self.allow_required
    }

    /// DENY first, then ALLOW.
    pub fn evaluate<'a>(&'a self, r: &Request<'_>) -> Verdict<'a> {
        if let Some(p) = self.deny.iter().find(|p| p.matches(r)) {
            return Verdict::Denied { policy: Some(&p.name), reason: "denied_by_policy" };
        }
        if !self.allow_required || self.allow.iter().any(|p| p.matches(r)) {
            return Verdict::Allowed;
        }
        Verdict::Denied { policy: None, reason: "no_allow_match" }
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The request target's path normalised as Istio's default (BASE, RFC 3986
/// section 6.2.2) does, and its query ("?..." or ""): percent-encoded
/// unreserved characters decoded, other escapes upper-cased, a backslash
/// taken as "/", dot segments removed. None: not an origin-form path.
pub fn normalize_path(target: &str) -> Option<(String, &str)> {
    let (raw, query) = match target.find('?') {
        Some(q) => (&target[..q], &target[q..]),
        None => (target, ""),
    };
    if !(raw.starts_with('/') || raw.starts_with('\\')) {
        return None;
    }
    let bytes = raw.as_bytes();
    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = h * 16 + l;
                if unreserved(c) {
                    decoded.push(c);
                } else {
                    decoded.push(b'%');
                    decoded.push(bytes[i + 1].to_ascii_uppercase());
                    decoded.push(bytes[i + 2].to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        decoded.push(if b == b'\\' { b'/' } else { b });
        i += 1;
    }
    // Only ASCII bytes were replaced, and by ASCII: still UTF-8 if the input was.
    let decoded = String::from_utf8(decoded).ok()?;
    Some((remove_dot_segments(&decoded), query))
}

/// RFC 3986 section 5.2.4, over segments.
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let last = segments.len().saturating_sub(1);
    for (i, s) in segments.iter().enumerate() {
        if *s == "." || *s == ".." {
            if *s == ".." {
                out.pop();
            }
            // A trailing dot segment leaves the path ending in "/".
            if i == last {
                out.push("");
            }
        } else {
            out.push(s);
        }
    }
    let mut p = String::with_capacity(path.len());
    p.push('/');
    p.push_str(&out.join("/"));
    p
}

#[cfg(test)]
mod tests {
    //! The cases shared with the TypeScript definition (test/shared/authorization-http.test.ts).
    use super::*;
    use serde_json::Value;

    const VECTORS: &str = include_str!("../../../test/shared/authorization-http-vectors.json");

    fn matches_of(v: &Value) -> Vec<pb::StringMatch> {
        v.as_array().map(|a| a.iter().map(|m| {
            let kind = match m["kind"].as_str().unwrap() {
                "exact" => pb::MatchKind::Exact,
                "prefix" => pb::MatchKind::Prefix,
                "suffix" => pb::MatchKind::Suffix,
                "any" => pb::MatchKind::Any,
                k => panic!("unknown kind {k}"),
            };
            pb::StringMatch { kind: kind as i32, value: m["value"].as_str().unwrap().to_string() }
        }).collect()).unwrap_or_default()
    }

    fn policies_of(v: &Value) -> Vec<pb::HttpPolicy> {
        v.as_array().unwrap().iter().map(|p| pb::HttpPolicy {
            name: p["name"].as_str().unwrap().to_string(),
            operations: p["operations"].as_array().unwrap().iter().map(|o| pb::HttpOperation {
                methods: matches_of(&o["methods"]),
                not_methods: matches_of(&o["notMethods"]),
                paths: matches_of(&o["paths"]),
                not_paths: matches_of(&o["notPaths"]),
                hosts: matches_of(&o["hosts"]),
                not_hosts: matches_of(&o["notHosts"]),
            }).collect(),
        }).collect()
    }

    #[test]
    fn normalises_paths_as_the_definition_does() {
        let v: Value = serde_json::from_str(VECTORS).unwrap();
        for case in v["normalize"].as_array().unwrap() {
            let input = case["in"].as_str().unwrap();
            let got = normalize_path(input).map(|(p, q)| format!("{p}{q}"));
            assert_eq!(got.as_deref(), case["out"].as_str(), "normalize {input:?}");
            if let Some(out) = got {
                // What the app receives is already normal: a second pass changes nothing.
                assert_eq!(normalize_path(&out).map(|(p, q)| format!("{p}{q}")), Some(out.clone()), "idempotent on {out:?}");
            }
        }
    }

    #[test]
    fn evaluates_requests_as_the_definition_does() {
        let v: Value = serde_json::from_str(VECTORS).unwrap();
        for case in v["evaluate"].as_array().unwrap() {
            let p = &case["policy"];
            let policy = RequestPolicy::from_pb(&pb::RequestPolicy { deny: policies_of(&p["deny"]), allow: policies_of(&p["allow"]), allow_required: p["allowRequired"].as_bool().unwrap() });
            for r in case["requests"].as_array().unwrap() {
                let raw_path = r["path"].as_str().unwrap();
                let want_reason = r["reason"].as_str().unwrap();
                let Some((path, _)) = normalize_path(raw_path) else {
                    assert_eq!(want_reason, "bad_path", "{raw_path:?} is not a path");
                    continue;
                };
                let host = r["host"].as_str().map(|h| h.to_ascii_lowercase());
                let got = policy.evaluate(&Request { method: r["method"].as_str().unwrap(), path: &path, host: host.as_deref() });
                let what = format!("{} {} host {:?} in {}", r["method"], raw_path, host, case["name"]);
                if r["allowed"].as_bool().unwrap() {
                    assert_eq!(got, Verdict::Allowed, "{what}");
                } else {
                    assert_eq!(got, Verdict::Denied { policy: r["policy"].as_str(), reason: match want_reason {
                        "denied_by_policy" => "denied_by_policy",
                        "no_allow_match" => "no_allow_match",
                        other => panic!("unexpected reason {other}"),
                    } }, "{what}");
                }
            }
        }
    }
}
