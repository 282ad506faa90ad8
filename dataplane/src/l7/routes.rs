//! Route tables (HttpRoutes): the Gateway API HTTPRoute and GRPCRoute rules
//! the agent compiled for the clients of one namespace and one service port,
//! in precedence order, and the choice of a rule per request: the first rule
//! one of whose matches matches decides. Regular expressions are compiled
//! once, when a table arrives; a table whose expression does not compile is
//! refused whole and the table it would have replaced stays.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use http::HeaderMap;
use regex::Regex;

use crate::control::pb;

/// A string match of a header or query parameter value.
enum ValueMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatch::Exact(x) => v == x,
            ValueMatch::Prefix(x) => v.starts_with(x.as_str()),
            ValueMatch::Regex(r) => r.is_match(v),
        }
    }
}

/// A path match. A prefix is kept without its trailing slash ("/" becomes
/// ""), so that matching it element-wise is a comparison and a look at the next byte.
enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(x) => path == x,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()) && matches!(path.as_bytes().get(p.len()), None | Some(b'/')),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

struct Match {
    path: Option<PathMatch>,
    headers: Vec<(String, ValueMatch)>,
    query: Vec<(String, ValueMatch)>,
    method: String,
}

/// The parts of a request a rule is chosen by.
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The path, without its query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl Match {
    fn matches(&self, r: &RequestView) -> bool {
        if !self.method.is_empty() && self.method != r.method {
            return false;
        }
        if let Some(p) = &self.path {
            if !p.matches(r.path) {
                return false;
            }
        }
        // A header sent more than once is matched on its values joined by ","
        // (RFC 9110's combination, which the Gateway API asks for).
        let header_ok = |(name, m): &(String, ValueMatch)| {
            let mut values = r.headers.get_all(name.as_str()).iter().filter_map(|v| v.to_str().ok()).peekable();
            values.peek().is_some() && m.matches(&values.collect::<Vec<_>>().join(","))
        };
        // A repeated query parameter is matched on its first value (the
        // standard leaves it undefined; this is what Envoy does).
        let query_ok = |(name, m): &(String, ValueMatch)| query_param(r.query.unwrap_or(""), name).is_some_and(|v| m.matches(&v));
        self.headers.iter().all(header_ok) && self.query.iter().all(query_ok)
    }
}

/// The first value of query parameter `name`, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One rule, its matches compiled; the rest is as the agent sent it.
pub struct Rule {
    pub rule: pb::HttpRouteRule,
    matches: Vec<Match>,
}

impl Rule {
    /// The path prefix the `i`th match matched with ("" for "/"), for ReplacePrefixMatch.
    pub fn matched_prefix(&self, i: Option<usize>) -> Option<&str> {
        match i.and_then(|i| self.matches.get(i)).and_then(|m| m.path.as_ref()) {
            Some(PathMatch::Prefix(p)) => Some(p),
            _ => None,
        }
    }
}

pub struct RouteTable {
    pub rules: Vec<Rule>,
}

impl RouteTable {
    /// The rule deciding a request, and which of its matches matched (None:
    /// a rule without matches, which matches every request); None: no rule matches.
    pub fn decide(&self, r: &RequestView) -> Option<(&Rule, Option<usize>)> {
        self.rules.iter().find_map(|rule| {
            if rule.matches.is_empty() {
                return Some((rule, None));
            }
            rule.matches.iter().position(|m| m.matches(r)).map(|i| (rule, Some(i)))
        })
    }
}

/// The whole value: the agent's expressions are anchored here, as the Gateway API means them.
fn whole(expr: &str, what: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{expr})$")).map_err(|e| format!("{what} regular expression {expr:?} does not compile: {e}"))
}

fn value_match(n: &pb::NamedMatch, what: &str) -> Result<(String, ValueMatch), String> {
    let m = match pb::MatchType::try_from(n.r#type) {
        Ok(pb::MatchType::Exact) => ValueMatch::Exact(n.value.clone()),
        Ok(pb::MatchType::Prefix) => ValueMatch::Prefix(n.value.clone()),
        Ok(pb::MatchType::Regex) => ValueMatch::Regex(whole(&n.value, &format!("{what} {:?}", n.name))?),
        Err(_) => return Err(format!("{what} {:?}: unknown match type {}", n.name, n.r#type)),
    };
    Ok((n.name.clone(), m))
}

fn compile_match(m: &pb::HttpRequestMatch) -> Result<Match, String> {
    let path = match &m.path {
        None => None,
        Some(p) => Some(match pb::MatchType::try_from(p.r#type) {
            Ok(pb::MatchType::Exact) => PathMatch::Exact(p.value.clone()),
            Ok(pb::MatchType::Prefix) => PathMatch::Prefix(p.value.trim_end_matches('/').to_string()),
            Ok(pb::MatchType::Regex) => PathMatch::Regex(whole(&p.value, "path")?),
            Err(_) => return Err(format!("path: unknown match type {}", p.r#type)),
        }),
    };
    let headers = m.headers.iter().map(|h| value_match(h, "header").map(|(n, v)| (n.to_ascii_lowercase(), v))).collect::<Result<_, _>>()?;
    let query = m.query.iter().map(|q| value_match(q, "query parameter")).collect::<Result<_, _>>()?;
    Ok(Match { path, headers, query, method: m.method.clone() })
}

/// Compiles a table the agent sent; Err names what does not compile.
pub fn compile(t: pb::HttpRouteTable) -> Result<RouteTable, String> {
    let mut rules = Vec::with_capacity(t.rules.len());
    for mut rule in t.rules {
        let matches = rule.matches.iter().map(compile_match).collect::<Result<_, _>>().map_err(|e| format!("{}: {e}", rule.route))?;
        rule.matches.clear();
        rules.push(Rule { rule, matches });
    }
    Ok(RouteTable { rules })
}

#[derive(Default)]
pub struct Routes {
    tables: RwLock<HashMap<String, Arc<RouteTable>>>,
}

impl Routes {
    pub fn get(&self, key: &str) -> Option<Arc<RouteTable>> {
        self.tables.read().unwrap().get(key).cloned()
    }

    /// Applies a change the agent pushed: every table that compiles replaces
    /// its key's, removed keys go; returns the (key, reason) of each table refused.
    pub fn apply(&self, m: pb::HttpRoutes) -> Vec<(String, String)> {
        let mut refused = Vec::new();
        let compiled: Vec<(String, RouteTable)> = m.tables.into_iter().filter_map(|t| {
            let key = t.key.clone();
            match compile(t) {
                Ok(table) => Some((key, table)),
                Err(e) => {
                    refused.push((key, e));
                    None
                }
            }
        }).collect();
        let mut tables = self.tables.write().unwrap();
        for key in &m.removed {
            tables.remove(key);
        }
        for (key, table) in compiled {
            tables.insert(key, Arc::new(table));
        }
        refused
    }
}

/// Picks a backend by weight given a uniform random `draw`; None when every weight is 0.
pub fn weighted<T>(items: &[T], weight: impl Fn(&T) -> u32, draw: u64) -> Option<&T> {
    let total: u64 = items.iter().map(|i| u64::from(weight(i))).sum();
    if total == 0 {
        return None;
    }
    let mut x = draw % total;
    for i in items {
        let w = u64::from(weight(i));
        if x < w {
            return Some(i);
        }
        x -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(t: pb::MatchType, v: &str) -> pb::HttpRequestMatch {
        pb::HttpRequestMatch { path: Some(pb::StringMatchRule { r#type: t as i32, value: v.into() }), ..Default::default() }
    }

    fn rule(route: &str, matches: Vec<pb::HttpRequestMatch>) -> pb::HttpRouteRule {
        pb::HttpRouteRule { route: route.into(), matches, ..Default::default() }
    }

    fn table(rules: Vec<pb::HttpRouteRule>) -> RouteTable {
        compile(pb::HttpRouteTable { key: "t".into(), rules }).unwrap()
    }

    fn decide<'a>(t: &'a RouteTable, method: &str, target: &str, headers: &[(&str, &str)]) -> Option<&'a str> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let (p, q) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
        t.decide(&RequestView { method, path: p, query: q, headers: &h }).map(|(r, _)| r.rule.route.as_str())
    }

    #[test]
    fn a_prefix_matches_whole_path_elements() {
        let t = table(vec![rule("a", vec![path(pb::MatchType::Prefix, "/a")]), rule("slash", vec![path(pb::MatchType::Prefix, "/b/")])]);
        for (p, want) in [("/a", Some("a")), ("/a/", Some("a")), ("/a/b", Some("a")), ("/ab", None), ("/b", Some("slash")), ("/b/c", Some("slash")), ("/bc", None), ("/", None)] {
            assert_eq!(decide(&t, "GET", p, &[]), want, "{p}");
        }
        let root = table(vec![rule("root", vec![path(pb::MatchType::Prefix, "/")])]);
        assert_eq!(decide(&root, "GET", "/anything/at/all", &[]), Some("root"));
        assert_eq!(decide(&root, "GET", "/", &[]), Some("root"));
    }

    #[test]
    fn exact_and_regex_paths_match_the_whole_path_without_its_query() {
        let t = table(vec![rule("exact", vec![path(pb::MatchType::Exact, "/x")]), rule("re", vec![path(pb::MatchType::Regex, "/v[0-9]+/.*")])]);
        assert_eq!(decide(&t, "GET", "/x?y=1", &[]), Some("exact"));
        assert_eq!(decide(&t, "GET", "/x/", &[]), None);
        assert_eq!(decide(&t, "GET", "/v2/items", &[]), Some("re"));
        assert_eq!(decide(&t, "GET", "/api/v2/items", &[]), None, "anchored: the whole path");
    }

    #[test]
    fn headers_query_and_method_must_all_match() {
        let m = pb::HttpRequestMatch {
            headers: vec![
                pb::NamedMatch { name: "X-Env".into(), r#type: pb::MatchType::Exact as i32, value: "canary".into() },
                pb::NamedMatch { name: "x-user".into(), r#type: pb::MatchType::Regex as i32, value: "u[0-9]+".into() },
            ],
            query: vec![pb::NamedMatch { name: "v".into(), r#type: pb::MatchType::Exact as i32, value: "a b".into() }],
            method: "POST".into(),
            ..Default::default()
        };
        let t = table(vec![rule("all", vec![m]), rule("fallback", vec![])]);
        let ok = [("x-env", "canary"), ("X-User", "u42")];
        assert_eq!(decide(&t, "POST", "/?w=1&v=a%20b&v=c", &ok), Some("all"), "header names are case-insensitive; the first value of a query parameter, decoded");
        assert_eq!(decide(&t, "GET", "/?v=a%20b", &ok), Some("fallback"), "method");
        assert_eq!(decide(&t, "POST", "/?v=c&v=a%20b", &ok), Some("fallback"), "the first value counts");
        assert_eq!(decide(&t, "POST", "/?v=a%20b", &[("x-env", "canary"), ("x-user", "admin")]), Some("fallback"), "regex header");
        assert_eq!(decide(&t, "POST", "/?v=a%20b", &[("x-user", "u1")]), Some("fallback"), "a missing header");
    }

    #[test]
    fn the_first_rule_with_a_matching_match_decides_in_the_agents_order() {
        // The agent orders rules by the standard's precedence; the table keeps that order.
        let t = table(vec![
            rule("exact", vec![path(pb::MatchType::Exact, "/shop/cart")]),
            rule("long", vec![path(pb::MatchType::Prefix, "/shop/cart")]),
            rule("short-or-header", vec![path(pb::MatchType::Prefix, "/nothing"), path(pb::MatchType::Prefix, "/shop")]),
        ]);
        assert_eq!(decide(&t, "GET", "/shop/cart", &[]), Some("exact"));
        assert_eq!(decide(&t, "GET", "/shop/cart/1", &[]), Some("long"));
        assert_eq!(decide(&t, "GET", "/shop/x", &[]), Some("short-or-header"), "any one match");
        let (r, i) = t.decide(&RequestView { method: "GET", path: "/shop/x", query: None, headers: &HeaderMap::new() }).unwrap();
        assert_eq!(r.matched_prefix(i), Some("/shop"), "the match that matched");
        assert_eq!(decide(&t, "GET", "/other", &[]), None, "no rule: the caller answers 404 NR");
    }

    #[test]
    fn a_table_that_does_not_compile_is_refused_whole_and_the_old_one_stays() {
        let routes = Routes::default();
        let good = pb::HttpRouteTable { key: "k".into(), rules: vec![rule("old", vec![])] };
        assert!(routes.apply(pb::HttpRoutes { tables: vec![good], removed: vec![] }).is_empty());
        let bad = pb::HttpRouteTable { key: "k".into(), rules: vec![rule("new", vec![]), rule("HTTPRoute/ns/r#1", vec![path(pb::MatchType::Regex, "/(unclosed")])] };
        let other = pb::HttpRouteTable { key: "k2".into(), rules: vec![rule("k2", vec![])] };
        let refused = routes.apply(pb::HttpRoutes { tables: vec![bad, other], removed: vec![] });
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "k");
        assert!(refused[0].1.contains("HTTPRoute/ns/r#1") && refused[0].1.contains("/(unclosed"), "{}", refused[0].1);
        assert_eq!(routes.get("k").unwrap().rules[0].rule.route, "old");
        assert!(routes.get("k2").is_some(), "the others apply");
        routes.apply(pb::HttpRoutes { tables: vec![], removed: vec!["k".into()] });
        assert!(routes.get("k").is_none());
    }

    #[test]
    fn backends_are_picked_by_weight() {
        let w = [("a", 9u32), ("zero", 0), ("b", 1)];
        let mut counts = HashMap::new();
        for draw in 0..1000u64 {
            *counts.entry(weighted(&w, |x| x.1, draw).unwrap().0).or_insert(0) += 1;
        }
        assert_eq!((counts["a"], counts["b"], counts.get("zero")), (900, 100, None));
        assert!(weighted(&[("x", 0u32)], |x| x.1, 5).is_none(), "all weights 0: none");
    }
}
