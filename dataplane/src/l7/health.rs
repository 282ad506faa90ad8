//! Passive health of an HTTP service's endpoints, as Envoy's outlier
//! detection does it: answers of 5xx or failed connects in a row eject an
//! endpoint from its service's balancing for base × (its ejections so far),
//! at most the maximum; it returns on its own once that is over. A success
//! resets the count. Never more than the configured share of a service's
//! endpoints is ejected at once (at least one, unless the share is 0): a
//! service whose endpoints all fail keeps being tried rather than emptied by
//! its own health check. Ejections and returns are told to the agent (a
//! metric, /config_dump): a few messages per endpoint, never one per request.
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::control::pb;

#[derive(Clone, Debug)]
pub struct Settings {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
    pub max_pending_requests: usize,
    pub max_connections: usize,
    /// Retry budget (retry.rs) and the longest request body buffered for retries and mirrors.
    pub retry_budget_percent: u32,
    pub min_retry_concurrency: u32,
    pub max_buffered_body_bytes: u64,
}

impl Default for Settings {
    /// What the agent's flags default to (agent/config.ts), until it says.
    fn default() -> Self {
        Settings {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
            max_pending_requests: 1024,
            max_connections: 1024,
            retry_budget_percent: 20,
            min_retry_concurrency: 3,
            max_buffered_body_bytes: 65_536,
        }
    }
}

impl From<&pb::HttpSettings> for Settings {
    fn from(s: &pb::HttpSettings) -> Self {
        let d = Settings::default();
        Settings {
            consecutive_failures: if s.consecutive_failures == 0 { d.consecutive_failures } else { s.consecutive_failures },
            base_ejection: if s.base_ejection_ms == 0 { d.base_ejection } else { Duration::from_millis(s.base_ejection_ms) },
            max_ejection: if s.max_ejection_ms == 0 { d.max_ejection } else { Duration::from_millis(s.max_ejection_ms) },
            max_ejection_percent: s.max_ejection_percent.min(100),
            max_pending_requests: if s.max_pending_requests == 0 { d.max_pending_requests } else { s.max_pending_requests as usize },
            max_connections: if s.max_connections == 0 { d.max_connections } else { s.max_connections as usize },
            retry_budget_percent: if s.retry_budget_percent == 0 { d.retry_budget_percent } else { s.retry_budget_percent.min(100) },
            min_retry_concurrency: if s.min_retry_concurrency == 0 { d.min_retry_concurrency } else { s.min_retry_concurrency },
            max_buffered_body_bytes: if s.max_buffered_body_bytes == 0 { d.max_buffered_body_bytes } else { s.max_buffered_body_bytes },
        }
    }
}

impl Settings {
    /// How many of `size` endpoints may be out at once.
    pub fn allowed_ejections(&self, size: usize) -> usize {
        if self.max_ejection_percent == 0 || size == 0 {
            return 0;
        }
        (size * self.max_ejection_percent as usize / 100).max(1)
    }
}

#[derive(Default)]
struct State {
    failures: u32,
    ejections: u32,
    until: Option<Instant>,
    since_ms: u64,
    until_ms: u64,
    reason: String,
}

/// One endpoint's health within one service.
#[derive(Default)]
pub struct Health {
    state: Mutex<State>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// An endpoint's ejection as the agent is told of it (`until_ms` 0: back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ejected {
    pub reason: String,
    pub since_ms: u64,
    pub until_ms: u64,
    pub ejections: u32,
}

impl Health {
    /// Whether it is ejected at `now`. An ejection that is over ends here,
    /// returned as `back` so the caller tells the agent.
    pub fn ejected(&self, now: Instant) -> (bool, Option<Ejected>) {
        let mut s = self.state.lock().unwrap();
        match s.until {
            Some(until) if until > now => (true, None),
            Some(_) => {
                s.until = None;
                s.failures = 0;
                (false, Some(Ejected { reason: std::mem::take(&mut s.reason), since_ms: s.since_ms, until_ms: 0, ejections: s.ejections }))
            }
            None => (false, None),
        }
    }

    pub fn success(&self) {
        self.state.lock().unwrap().failures = 0;
    }

    /// A 5xx answer or a failed connect. `may_eject`: whether the service's
    /// cap leaves room (the caller counted the others). Returns the ejection it caused.
    pub fn failure(&self, reason: &str, settings: &Settings, may_eject: bool, now: Instant) -> Option<Ejected> {
        let mut s = self.state.lock().unwrap();
        if s.until.is_some_and(|u| u > now) {
            return None; // already out: a request that started before its ejection
        }
        s.failures += 1;
        if s.failures < settings.consecutive_failures || !may_eject {
            return None;
        }
        s.failures = 0;
        s.ejections += 1;
        let length = settings.base_ejection.saturating_mul(s.ejections).min(settings.max_ejection);
        s.until = Some(now + length);
        let wall = SystemTime::now();
        s.since_ms = unix_ms(wall);
        s.until_ms = unix_ms(wall + length);
        s.reason = reason.to_string();
        Some(Ejected { reason: s.reason.clone(), since_ms: s.since_ms, until_ms: s.until_ms, ejections: s.ejections })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings { consecutive_failures: 3, base_ejection: Duration::from_secs(10), max_ejection: Duration::from_secs(25), ..Settings::default() }
    }

    #[test]
    fn consecutive_failures_eject_for_a_growing_interval() {
        let (h, s, t0) = (Health::default(), settings(), Instant::now());
        assert!(h.failure("5xx", &s, true, t0).is_none());
        h.success();
        assert!(h.failure("5xx", &s, true, t0).is_none());
        assert!(h.failure("5xx", &s, true, t0).is_none());
        let e = h.failure("503", &s, true, t0).expect("third in a row ejects");
        assert_eq!((e.ejections, e.until_ms - e.since_ms), (1, 10_000));
        assert!(h.ejected(t0 + Duration::from_secs(9)).0);
        let (out, back) = h.ejected(t0 + Duration::from_secs(10));
        assert!(!out);
        assert_eq!(back.map(|b| b.until_ms), Some(0), "its return is told once");
        assert!(h.ejected(t0 + Duration::from_secs(11)).1.is_none());
        for _ in 0..2 {
            assert!(h.failure("5xx", &s, true, t0 + Duration::from_secs(11)).is_none());
        }
        let e = h.failure("5xx", &s, true, t0 + Duration::from_secs(11)).unwrap();
        assert_eq!((e.ejections, e.until_ms - e.since_ms), (2, 20_000), "base × ejections");
        assert!(h.ejected(t0 + Duration::from_secs(30)).0);
        assert!(!h.ejected(t0 + Duration::from_secs(31)).0);
        for _ in 0..3 {
            h.failure("5xx", &s, true, t0 + Duration::from_secs(40));
        }
        assert!(!h.ejected(t0 + Duration::from_secs(40) + Duration::from_secs(25)).0, "capped at the maximum");
    }

    #[test]
    fn the_cap_keeps_an_endpoint_in() {
        let (h, s, t0) = (Health::default(), settings(), Instant::now());
        for _ in 0..10 {
            assert!(h.failure("5xx", &s, false, t0).is_none());
        }
        assert!(!h.ejected(t0).0);
        assert_eq!(s.allowed_ejections(3), 1);
        assert_eq!(s.allowed_ejections(10), 5);
        assert_eq!(Settings { max_ejection_percent: 0, ..s }.allowed_ejections(10), 0);
    }
}
