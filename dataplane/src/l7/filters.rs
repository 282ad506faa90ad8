//! A route rule's filters that change a request or its answer, as the
//! Gateway API defines them: header modifiers, URL rewrite (hostname and
//! path) and the Location of a RequestRedirect.
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use crate::control::pb;

/// Applies a header modifier: `set` replaces, `add` appends, `remove` drops.
/// A name or value that is not valid HTTP is skipped (the agent validated them).
pub fn modify_headers(h: &mut HeaderMap, m: Option<&pb::HeaderModifier>) {
    let Some(m) = m else { return };
    let pair = |x: &pb::Header| Some((HeaderName::from_bytes(x.name.as_bytes()).ok()?, HeaderValue::from_str(&x.value).ok()?));
    for (name, value) in m.set.iter().filter_map(pair) {
        h.insert(name, value);
    }
    for (name, value) in m.add.iter().filter_map(pair) {
        h.append(name, value);
    }
    for name in &m.remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            h.remove(n);
        }
    }
}

/// The path after a path modifier. `prefix` is the rule's PathPrefix match
/// that matched, without its trailing slash ("" for "/"). ReplacePrefixMatch
/// replaces that many leading path elements: "/foo" → "/xyz" makes "/foo/bar"
/// "/xyz/bar" and "/foo" "/xyz"; "/foo" → "/" makes "/foo/bar" "/bar".
pub fn modify_path(path: &str, m: Option<&pb::PathModifier>, prefix: Option<&str>) -> String {
    let Some(m) = m else { return path.to_string() };
    match pb::PathModifierType::try_from(m.r#type) {
        Ok(pb::PathModifierType::PathModifierFull) => m.value.clone(),
        Ok(pb::PathModifierType::PathModifierPrefix) => {
            let prefix = prefix.unwrap_or("");
            let rest = path.strip_prefix(prefix).unwrap_or(path);
            let joined = format!("{}{rest}", m.value.trim_end_matches('/'));
            if joined.is_empty() { "/".to_string() } else if joined.starts_with('/') { joined } else { format!("/{joined}") }
        }
        _ => path.to_string(),
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// The Location of a redirect, per the Gateway API's RequestRedirect: each
/// part not given is the request's. The port: the given one; else, when the
/// scheme is given, that scheme's well-known port; else the request's. A
/// scheme's well-known port is left out. The query is kept.
pub fn redirect_location(r: &pb::Redirect, authority: &str, path: &str, query: Option<&str>, prefix: Option<&str>) -> String {
    let (req_host, req_port) = split_authority(authority);
    let scheme = if r.scheme.is_empty() { "http" } else { r.scheme.as_str() };
    let host = if r.hostname.is_empty() { req_host } else { r.hostname.as_str() };
    let port = if r.port != 0 {
        u16::try_from(r.port).ok()
    } else if !r.scheme.is_empty() {
        default_port(scheme)
    } else {
        req_port.or(default_port(scheme))
    };
    let port = port.filter(|p| Some(*p) != default_port(scheme)).map(|p| format!(":{p}")).unwrap_or_default();
    let path = modify_path(path, r.path.as_ref(), prefix);
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{scheme}://{host}{port}{path}{query}")
}

/// Host and port of an authority ("[v6]:port" included).
pub fn split_authority(a: &str) -> (&str, Option<u16>) {
    if let Some(rest) = a.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            return (&a[..h.len() + 2], p.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match a.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse().ok()),
        _ => (a, None),
    }
}

/// The authority after a hostname rewrite: the new host, the request's port kept.
pub fn rewrite_authority(authority: &str, hostname: &str) -> String {
    if hostname.is_empty() {
        return authority.to_string();
    }
    match split_authority(authority).1 {
        Some(p) => format!("{hostname}:{p}"),
        None => hostname.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(t: pb::PathModifierType, v: &str) -> Option<pb::PathModifier> {
        Some(pb::PathModifier { r#type: t as i32, value: v.into() })
    }

    #[test]
    fn replace_prefix_match_follows_the_standard() {
        let prefix = pm(pb::PathModifierType::PathModifierPrefix, "/xyz");
        for (path, matched, want) in [("/foo/bar", "/foo", "/xyz/bar"), ("/foo", "/foo", "/xyz"), ("/foo/", "/foo", "/xyz/"), ("/bar", "", "/xyz/bar")] {
            assert_eq!(modify_path(path, prefix.as_ref(), Some(matched)), want, "{path} under {matched:?}");
        }
        let root = pm(pb::PathModifierType::PathModifierPrefix, "/");
        assert_eq!(modify_path("/foo/bar", root.as_ref(), Some("/foo")), "/bar");
        assert_eq!(modify_path("/foo", root.as_ref(), Some("/foo")), "/");
        assert_eq!(modify_path("/a/b", pm(pb::PathModifierType::PathModifierFull, "/new").as_ref(), Some("/a")), "/new");
        assert_eq!(modify_path("/a/b", None, None), "/a/b");
    }

    #[test]
    fn redirects_keep_what_is_not_given_and_leave_default_ports_out() {
        let r = |scheme: &str, host: &str, port: u32| pb::Redirect { scheme: scheme.into(), hostname: host.into(), port, status: 301, path: None };
        assert_eq!(redirect_location(&r("", "", 0), "web.shop:8080", "/a", Some("q=1"), None), "http://web.shop:8080/a?q=1");
        assert_eq!(redirect_location(&r("https", "", 0), "web.shop:8080", "/a", None, None), "https://web.shop/a", "a scheme: its well-known port");
        assert_eq!(redirect_location(&r("https", "secure.example", 8443), "web", "/a", None, None), "https://secure.example:8443/a");
        assert_eq!(redirect_location(&r("", "", 80), "web:8080", "/", None, None), "http://web/", "port 80 of http is left out");
        let mut p = r("", "other", 0);
        p.path = pm(pb::PathModifierType::PathModifierPrefix, "/v2");
        assert_eq!(redirect_location(&p, "web", "/v1/items", None, Some("/v1")), "http://other/v2/items");
        assert_eq!(redirect_location(&r("", "", 0), "[::1]:9000", "/", None, None), "http://[::1]:9000/");
    }

    #[test]
    fn header_modifiers_set_add_and_remove() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        let hd = |n: &str, v: &str| pb::Header { name: n.into(), value: v.into() };
        let m = pb::HeaderModifier { set: vec![hd("x-a", "2")], add: vec![hd("x-b", "1"), hd("x-b", "2")], remove: vec!["X-Gone".into()] };
        modify_headers(&mut h, Some(&m));
        assert_eq!(h.get("x-a").unwrap(), "2");
        assert_eq!(h.get_all("x-b").iter().count(), 2);
        assert!(!h.contains_key("x-gone"));
        assert_eq!(rewrite_authority("web:8080", "api.internal"), "api.internal:8080");
        assert_eq!(rewrite_authority("web", "api.internal"), "api.internal");
    }
}
