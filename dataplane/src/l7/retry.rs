//! Retries: the budget that keeps them from turning a brown-out into an
//! outage (Envoy's retry budget: per service, retries in flight stay under a
//! share of the requests in flight, with a floor so that low traffic still
//! retries), the backoff between attempts, and the counts of retries,
//! refusals and mirrored requests reported to the agent (RequestStats.retries).
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::control::pb;

/// Whether one more retry may start: retries in flight (this one not
/// counted) stay under max(min, percent × requests in flight / 100).
pub fn within_budget(retries: usize, requests: usize, percent: u32, min: u32) -> bool {
    let share = requests.saturating_mul(percent as usize) / 100;
    retries < share.max(min as usize)
}

/// The wait before retry `n` (1 for the first): base × 2^(n-1), capped at
/// 10 × base, then jittered ±25 % by `unit` (uniform in [0, 1)).
pub fn backoff(base: Duration, n: u32, unit: f64) -> Duration {
    let grown = base.saturating_mul(1u32 << n.saturating_sub(1).min(16)).min(base.saturating_mul(10));
    grown.mul_f64(0.75 + 0.5 * unit.clamp(0.0, 1.0))
}

/// One service's requests and retries in flight.
#[derive(Default)]
pub struct Budget {
    requests: AtomicUsize,
    retries: AtomicUsize,
}

/// Held while a request (or a retry) is in flight.
pub struct Held(Arc<Budget>, bool);

impl Drop for Held {
    fn drop(&mut self) {
        let n = if self.1 { &self.0.retries } else { &self.0.requests };
        n.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Budget {
    pub fn request(self: &Arc<Self>) -> Held {
        self.requests.fetch_add(1, Ordering::SeqCst);
        Held(self.clone(), false)
    }

    /// A retry's hold, unless the budget is spent.
    pub fn retry(self: &Arc<Self>, percent: u32, min: u32) -> Option<Held> {
        let requests = self.requests.load(Ordering::SeqCst);
        self.retries.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| within_budget(r, requests, percent, min).then_some(r + 1)).ok()?;
        Some(Held(self.clone(), true))
    }
}

#[derive(Default, Clone, Copy)]
struct Counts {
    retried: u64,
    budget_exhausted: u64,
    mirrored: u64,
}

/// The budgets and counts of every service, by service name.
#[derive(Default)]
pub struct Retries {
    budgets: Mutex<HashMap<String, Arc<Budget>>>,
    counts: Mutex<HashMap<String, Counts>>,
}

pub enum Count {
    Retried,
    BudgetExhausted,
    Mirrored,
}

impl Retries {
    /// The budget of `service`. Budgets are few (one per service a client
    /// calls) and tiny, so they are kept for the process's life.
    pub fn budget(&self, service: &str) -> Arc<Budget> {
        self.budgets.lock().unwrap().entry(service.to_string()).or_default().clone()
    }

    pub fn count(&self, service: &str, what: Count) {
        let mut counts = self.counts.lock().unwrap();
        let c = counts.entry(service.to_string()).or_default();
        match what {
            Count::Retried => c.retried += 1,
            Count::BudgetExhausted => c.budget_exhausted += 1,
            Count::Mirrored => c.mirrored += 1,
        }
    }

    /// The counts since the last call.
    pub fn take(&self) -> Vec<pb::RetryCount> {
        let mut counts = self.counts.lock().unwrap();
        let mut out: Vec<pb::RetryCount> = counts.drain().map(|(service, c)| pb::RetryCount { service, retried: c.retried, budget_exhausted: c.budget_exhausted, mirrored: c.mirrored }).collect();
        out.sort_by(|a, b| a.service.cmp(&b.service));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_a_share_of_requests_with_a_floor() {
        assert!(within_budget(2, 0, 20, 3), "the floor: 3 retries even with no traffic");
        assert!(!within_budget(3, 10, 20, 3), "20 % of 10 is 2 < 3: the floor holds");
        assert!(within_budget(9, 50, 20, 3), "20 % of 50 is 10");
        assert!(!within_budget(10, 50, 20, 3));
        assert!(!within_budget(0, 100, 0, 0), "no budget at all: no retry");
        let b = Arc::new(Budget::default());
        let reqs: Vec<Held> = (0..50).map(|_| b.request()).collect();
        let retries: Vec<Held> = (0..10).map_while(|_| b.retry(20, 3)).collect();
        assert_eq!(retries.len(), 10);
        assert!(b.retry(20, 3).is_none(), "the eleventh is refused");
        drop(retries);
        drop(reqs);
        let again: Vec<Held> = std::iter::from_fn(|| b.retry(20, 3)).take(10).collect();
        assert_eq!(again.len(), 3, "held ones given back; the floor remains");
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered_a_quarter_either_way() {
        let base = Duration::from_millis(100);
        assert_eq!(backoff(base, 1, 0.5), Duration::from_millis(100));
        assert_eq!(backoff(base, 2, 0.5), Duration::from_millis(200));
        assert_eq!(backoff(base, 3, 0.5), Duration::from_millis(400));
        assert_eq!(backoff(base, 5, 0.5), Duration::from_millis(1000), "capped at 10 × base");
        assert_eq!(backoff(base, 40, 0.5), Duration::from_millis(1000));
        assert_eq!(backoff(base, 1, 0.0), Duration::from_millis(75));
        let top = backoff(base, 5, 0.999_999);
        assert!(top > Duration::from_millis(1249) && top < Duration::from_millis(1250), "{top:?}");
        assert_eq!(backoff(Duration::ZERO, 3, 0.3), Duration::ZERO);
    }

    #[test]
    fn counts_are_per_service_and_taken_once() {
        let r = Retries::default();
        r.count("b.ns.svc.cluster.local", Count::Retried);
        r.count("b.ns.svc.cluster.local", Count::Retried);
        r.count("b.ns.svc.cluster.local", Count::BudgetExhausted);
        r.count("a.ns.svc.cluster.local", Count::Mirrored);
        let t = r.take();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].service.as_str(), t[0].mirrored), ("a.ns.svc.cluster.local", 1));
        assert_eq!((t[1].retried, t[1].budget_exhausted, t[1].mirrored), (2, 1, 0));
        assert!(r.take().is_empty());
    }
}
