//! The HTTP services' endpoint tables, as the agent compiles and pushes
//! them (HttpServices), and the choice of an endpoint per request: power of
//! two choices over least outstanding requests, weighted. Of the endpoints
//! not ejected (all of them when every one is), only those of the lowest
//! locality rank are candidates, as the L4 routing keeps a connection in its
//! zone, then its region (agent/state/mesh-state.ts pickEndpoint). Two
//! candidates are drawn at random in proportion to their weight, and the one
//! with fewer requests in flight per unit of weight wins; a tie goes to the
//! one that was given fewer requests per unit of weight so far, which keeps
//! a single client's sequential requests evenly spread.
//!
//! An endpoint's live state (requests in flight, health) belongs to the
//! (service, endpoint) pair and outlives table updates, so a connection that
//! outlives an endpoint change keeps its counts right and follows the new table.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::control::pb;
use crate::l7::circuit::Circuit;
use crate::l7::health::{Ejected, Health, Settings};

/// An endpoint's state shared by every table it is in.
#[derive(Default)]
pub struct Live {
    pub outstanding: AtomicU64,
    pub given: AtomicU64,
    pub health: Health,
}

pub struct Endpoint {
    pub info: pb::HttpEndpoint,
    pub live: Arc<Live>,
}

pub struct Table {
    pub service: String,
    /// HTTP/2 to the upstream (http2, grpc) or HTTP/1.1 (http).
    pub http2: bool,
    pub grpc: bool,
    pub endpoints: Vec<Endpoint>,
    pub circuit: Arc<Circuit>,
}

/// A request's hold on its endpoint: one more in flight until dropped.
pub struct InFlight(Arc<Live>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An ejection or return to tell the agent.
pub type Event = (String, pb::HttpEndpoint, Ejected);

#[derive(Default)]
pub struct Services {
    tables: RwLock<HashMap<String, Arc<Table>>>,
    live: Mutex<HashMap<(String, String), Arc<Live>>>,
    circuits: Mutex<HashMap<String, Arc<Circuit>>>,
    settings: RwLock<Settings>,
    rng: AtomicU64,
}

impl Services {
    pub fn settings(&self) -> Settings {
        self.settings.read().unwrap().clone()
    }

    pub fn get(&self, key: &str) -> Option<Arc<Table>> {
        self.tables.read().unwrap().get(key).cloned()
    }

    /// Applies a change the agent pushed.
    pub fn apply(&self, m: pb::HttpServices) {
        if let Some(s) = m.settings.as_ref() {
            *self.settings.write().unwrap() = Settings::from(s);
        }
        let mut tables = self.tables.write().unwrap();
        for key in &m.removed {
            tables.remove(key);
        }
        let mut live = self.live.lock().unwrap();
        let mut circuits = self.circuits.lock().unwrap();
        for s in m.services {
            let endpoints = s.endpoints.into_iter().map(|info| {
                let l = live.entry((s.service.clone(), info.authority.clone())).or_default().clone();
                Endpoint { info, live: l }
            }).collect();
            let circuit = circuits.entry(s.service.clone()).or_default().clone();
            let table = Table { http2: s.protocol != "http", grpc: s.protocol == "grpc", service: s.service, endpoints, circuit };
            tables.insert(s.key, Arc::new(table));
        }
        // State of endpoints no table holds any more goes (nothing in flight
        // refers to it but the requests' own Arcs).
        let held: std::collections::HashSet<(String, String)> =
            tables.values().flat_map(|t| t.endpoints.iter().map(|e| (t.service.clone(), e.info.authority.clone()))).collect();
        live.retain(|k, _| held.contains(k));
        let services: std::collections::HashSet<&String> = tables.values().map(|t| &t.service).collect();
        circuits.retain(|k, _| services.contains(k));
    }

    /// A random number: xorshift64*, seeded on first use; quality is ample
    /// for picking endpoints, backends by weight and shares of requests.
    pub fn random(&self) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        if x == 0 {
            x = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0x9e37_79b9, |d| d.as_nanos() as u64) | 1;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The endpoint for the next request of `table`, held in flight, and the
    /// returns from ejection noticed on the way (to tell the agent).
    pub fn pick(&self, table: &Table, now: Instant) -> (Option<(usize, InFlight)>, Vec<Event>) {
        self.pick_excluding(table, now, &[])
    }

    /// As `pick`, avoiding the endpoints `tried` (a retry's earlier
    /// attempts) while the candidates include another.
    pub fn pick_excluding(&self, table: &Table, now: Instant, tried: &[usize]) -> (Option<(usize, InFlight)>, Vec<Event>) {
        let mut events = Vec::new();
        let mut up: Vec<usize> = Vec::with_capacity(table.endpoints.len());
        for (i, e) in table.endpoints.iter().enumerate() {
            let (out, back) = e.live.health.ejected(now);
            if let Some(b) = back {
                events.push((table.service.clone(), e.info.clone(), b));
            }
            if !out {
                up.push(i);
            }
        }
        if up.is_empty() {
            up = (0..table.endpoints.len()).collect();
        }
        let Some(rank) = up.iter().map(|&i| table.endpoints[i].info.rank).min() else { return (None, events) };
        up.retain(|&i| table.endpoints[i].info.rank == rank);
        if up.iter().any(|i| !tried.contains(i)) {
            up.retain(|i| !tried.contains(i));
        }
        let weight = |i: usize| u64::from(table.endpoints[i].info.weight.max(1));
        let total: u64 = up.iter().map(|&i| weight(i)).sum();
        let draw = |skip: Option<usize>| -> usize {
            let total = total - skip.map_or(0, weight);
            let mut x = self.random() % total.max(1);
            for &i in &up {
                if Some(i) == skip {
                    continue;
                }
                if x < weight(i) {
                    return i;
                }
                x -= weight(i);
            }
            *up.iter().rev().find(|&&i| Some(i) != skip).unwrap_or(&up[0])
        };
        let a = draw(None);
        let chosen = if up.len() == 1 {
            a
        } else {
            let b = draw(Some(a));
            // Compared per unit of weight without dividing: x/wx < y/wy ⇔ x·wy < y·wx.
            let load = |i: usize| {
                let l = &table.endpoints[i].live;
                (l.outstanding.load(Ordering::SeqCst), l.given.load(Ordering::SeqCst))
            };
            let ((oa, ga), (ob, gb)) = (load(a), load(b));
            let (wa, wb) = (weight(a), weight(b));
            match (oa * wb).cmp(&(ob * wa)) {
                std::cmp::Ordering::Less => a,
                std::cmp::Ordering::Greater => b,
                std::cmp::Ordering::Equal => if ga * wb <= gb * wa { a } else { b },
            }
        };
        let live = table.endpoints[chosen].live.clone();
        live.outstanding.fetch_add(1, Ordering::SeqCst);
        live.given.fetch_add(1, Ordering::SeqCst);
        (Some((chosen, InFlight(live))), events)
    }

    /// A request's result at `endpoint` of `table`: a 5xx or failed connect
    /// (`failure` names it) counts towards its ejection; anything else resets it.
    pub fn report(&self, table: &Table, endpoint: usize, failure: Option<&str>, now: Instant) -> Option<Event> {
        let e = &table.endpoints[endpoint];
        let Some(reason) = failure else {
            e.live.health.success();
            return None;
        };
        let settings = self.settings();
        let out = table.endpoints.iter().enumerate().filter(|(i, o)| *i != endpoint && o.live.health.ejected(now).0).count();
        let may = out < settings.allowed_ejections(table.endpoints.len());
        e.live.health.failure(reason, &settings, may, now).map(|ej| (table.service.clone(), e.info.clone(), ej))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(authority: &str, weight: u32, rank: u32) -> pb::HttpEndpoint {
        pb::HttpEndpoint { authority: authority.into(), weight, rank, ..Default::default() }
    }

    fn services(endpoints: Vec<pb::HttpEndpoint>) -> (Services, Arc<Table>) {
        let s = Services::default();
        s.apply(pb::HttpServices {
            services: vec![pb::HttpService { key: "k".into(), service: "web.default.svc.cluster.local".into(), protocol: "http".into(), endpoints }],
            removed: vec![],
            settings: Some(pb::HttpSettings { consecutive_failures: 2, base_ejection_ms: 10_000, max_ejection_ms: 60_000, max_ejection_percent: 50, ..Default::default() }),
        });
        let t = s.get("k").unwrap();
        (s, t)
    }

    fn spread(s: &Services, t: &Table, n: usize, hold: bool) -> Vec<usize> {
        let mut counts = vec![0; t.endpoints.len()];
        let mut held = Vec::new();
        for _ in 0..n {
            let (Some((i, f)), _) = s.pick(t, Instant::now()) else { panic!("no endpoint") };
            counts[i] += 1;
            if hold {
                held.push(f);
            }
        }
        counts
    }

    #[test]
    fn sequential_requests_spread_evenly() {
        let (s, t) = services(vec![ep("a", 1, 0), ep("b", 1, 0), ep("c", 1, 0)]);
        let c = spread(&s, &t, 600, false);
        assert!(c.iter().all(|&n| (190..=210).contains(&n)), "{c:?}");
    }

    #[test]
    fn weights_and_outstanding_requests_steer() {
        let (s, t) = services(vec![ep("a", 3, 0), ep("b", 1, 0)]);
        let c = spread(&s, &t, 400, false);
        assert!((280..=320).contains(&c[0]), "3:1 by weight: {c:?}");
        let (s, t) = services(vec![ep("a", 1, 0), ep("b", 1, 0)]);
        t.endpoints[0].live.outstanding.store(50, Ordering::SeqCst);
        let c = spread(&s, &t, 20, false);
        assert_eq!(c, vec![0, 20], "the busy endpoint loses every comparison");
    }

    #[test]
    fn the_nearest_rank_serves_and_ejection_moves_on() {
        let (s, t) = services(vec![ep("near", 1, 0), ep("far", 1, 2), ep("far2", 1, 2), ep("far3", 1, 2)]);
        assert_eq!(spread(&s, &t, 50, false), vec![50, 0, 0, 0]);
        let now = Instant::now();
        assert!(s.report(&t, 0, Some("5xx"), now).is_none());
        let (svc, e, ej) = s.report(&t, 0, Some("5xx"), now).expect("ejected");
        assert_eq!((svc.as_str(), e.authority.as_str(), ej.ejections), ("web.default.svc.cluster.local", "near", 1));
        let c = spread(&s, &t, 30, false);
        assert_eq!(c[0], 0, "ejected: the next rank serves");
        // The cap: 50 % of 4 is 2; a third endpoint failing stays in.
        for _ in 0..2 {
            s.report(&t, 1, Some("5xx"), now);
        }
        for _ in 0..5 {
            assert!(s.report(&t, 2, Some("5xx"), now).is_none());
        }
        let c = spread(&s, &t, 30, false);
        assert_eq!((c[0], c[1]), (0, 0));
    }

    #[test]
    fn all_ejected_still_serves_and_state_outlives_an_update() {
        let (s, t) = services(vec![ep("a", 1, 0)]);
        let now = Instant::now();
        s.report(&t, 0, Some("5xx"), now);
        assert!(s.report(&t, 0, Some("5xx"), now).is_some(), "one of one may go (at least one)");
        assert!(s.pick(&t, now).0.is_some(), "every endpoint ejected: tried anyway");
        let (_, f) = s.pick(&t, now).0.unwrap();
        s.apply(pb::HttpServices {
            services: vec![pb::HttpService { key: "k".into(), service: "web.default.svc.cluster.local".into(), protocol: "grpc".into(), endpoints: vec![ep("a", 1, 0), ep("b", 1, 0)] }],
            ..Default::default()
        });
        let t2 = s.get("k").unwrap();
        assert!(t2.http2 && t2.grpc);
        assert_eq!(t2.endpoints[0].live.outstanding.load(Ordering::SeqCst), 1, "in flight across the update");
        drop(f);
        assert_eq!(t2.endpoints[0].live.outstanding.load(Ordering::SeqCst), 0);
        assert_eq!(spread(&s, &t2, 10, false), vec![0, 10], "still ejected after the update");
        let (s3, t3) = services(vec![ep("a", 1, 0), ep("b", 1, 0), ep("c", 1, 0)]);
        for _ in 0..20 {
            assert_eq!(s3.pick_excluding(&t3, now, &[0, 2]).0.unwrap().0, 1, "an endpoint not yet tried");
        }
        assert!(s3.pick_excluding(&t3, now, &[0, 1, 2]).0.is_some(), "every one tried: any");
        s.apply(pb::HttpServices { removed: vec!["k".into()], ..Default::default() });
        assert!(s.get("k").is_none());
    }
}
