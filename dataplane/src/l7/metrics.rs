//! Istio's request metrics, aggregated here: each finished request adds to
//! its series (one per label set: side, protocol, status, grpc-status,
//! flags, service and the two peers) — a count, and a bucket and a sum of
//! each of duration, request bytes and response bytes. Every second the
//! agent is sent what grew (`report`), a series' labels only the first time
//! (per attached agent): nothing per request crosses to the agent, which
//! adds Istio's names and exports `istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes` and
//! `istio_response_bytes` (agent/proxy/request-metrics.ts).
//!
//! The bucket bounds are the agent's (RequestTelemetry): until it has sent
//! them nothing is aggregated; new bounds start the aggregation afresh.
use std::collections::HashMap;
use std::sync::Mutex;

use crate::control::pb;
use crate::l7::outcome::{Peer, RequestObserver, RequestOutcome, Side};

/// The most series kept at once. Each is a distinct combination of peers,
/// service, status and flags; past this many (a client scanning paths
/// yields statuses, not series, so this is an unusual mesh) requests of new
/// combinations are counted as dropped instead of growing memory without bound.
const MAX_SERIES: usize = 20_000;

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    destination_side: bool,
    protocol: &'static str,
    status: u16,
    grpc_status: Option<u32>,
    flags: String,
    service: String,
    source: (String, String, String),
    destination: (String, String, String),
}

fn peer(p: &Peer) -> (String, String, String) {
    (p.identity.clone(), p.workload.clone(), p.namespace.clone())
}

fn pb_peer(p: &(String, String, String)) -> pb::RequestPeer {
    pb::RequestPeer { identity: p.0.clone(), workload: p.1.clone(), namespace: p.2.clone() }
}

/// One histogram's growth since the last report: per-bucket counts (the
/// bounds', then +Inf) and the sum.
#[derive(Clone, Default)]
struct Hist {
    buckets: Vec<u64>,
    sum: f64,
}

impl Hist {
    fn new(bounds: usize) -> Self {
        Hist { buckets: vec![0; bounds + 1], sum: 0.0 }
    }

    fn observe(&mut self, bounds: &[f64], v: f64) {
        // The first bound the value does not exceed (Prometheus' `le`), else +Inf.
        let i = bounds.partition_point(|b| *b < v);
        self.buckets[i] += 1;
        self.sum += v;
    }

    fn take(&mut self) -> Hist {
        let n = self.buckets.len();
        std::mem::replace(self, Hist::new(n - 1))
    }
}

struct Series {
    id: u64,
    declared: bool,
    count: u64,
    duration: Hist,
    request_bytes: Hist,
    response_bytes: Hist,
}

#[derive(Default)]
struct State {
    /// The agent's bounds; None until it sent them.
    duration_bounds: Option<Vec<f64>>,
    bytes_bounds: Vec<f64>,
    series: HashMap<Key, Series>,
    next_id: u64,
    dropped: u64,
}

#[derive(Default)]
pub struct RequestMetrics {
    state: Mutex<State>,
}

impl RequestMetrics {
    /// The agent's bucket bounds (RequestTelemetry). Bounds other than those
    /// in use discard what was aggregated under the old ones (an agent of
    /// another version attached); the same bounds change nothing.
    pub fn configure(&self, duration_bounds_ms: Vec<f64>, bytes_bounds: Vec<f64>) -> Result<(), String> {
        for (what, b) in [("duration_bounds_ms", &duration_bounds_ms), ("bytes_bounds", &bytes_bounds)] {
            if b.iter().any(|x| !x.is_finite()) || b.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("request telemetry: {what} must be finite and ascending, got {b:?}"));
            }
        }
        let mut s = self.state.lock().unwrap();
        if s.duration_bounds.as_ref() == Some(&duration_bounds_ms) && s.bytes_bounds == bytes_bounds {
            return Ok(());
        }
        s.series.clear();
        s.duration_bounds = Some(duration_bounds_ms);
        s.bytes_bounds = bytes_bounds;
        Ok(())
    }

    /// A new agent attached: it knows no series, so each is declared again in its next report.
    pub fn attached(&self) {
        for series in self.state.lock().unwrap().series.values_mut() {
            series.declared = false;
        }
    }

    /// What grew since the last report, with `retries` (the retry counts
    /// since then: retry.rs); None when nothing did.
    pub fn report_with(&self, retries: Vec<pb::RetryCount>) -> Option<pb::RequestStats> {
        match self.report() {
            Some(mut stats) => {
                stats.retries = retries;
                Some(stats)
            }
            None => (!retries.is_empty()).then(|| pb::RequestStats { retries, ..Default::default() }),
        }
    }

    /// What grew since the last report (None: nothing did), and how many
    /// requests were not counted for want of room since the last.
    pub fn report(&self) -> Option<pb::RequestStats> {
        let mut s = self.state.lock().unwrap();
        let mut out = pb::RequestStats::default();
        for (key, series) in s.series.iter_mut() {
            if series.count == 0 {
                continue;
            }
            if !series.declared {
                series.declared = true;
                out.series.push(pb::RequestSeries {
                    id: series.id,
                    destination_side: key.destination_side,
                    protocol: key.protocol.into(),
                    status: u32::from(key.status),
                    grpc_status: key.grpc_status.map(|g| g.to_string()).unwrap_or_default(),
                    response_flags: if key.flags.is_empty() { "-".into() } else { key.flags.clone() },
                    service: key.service.clone(),
                    source: Some(pb_peer(&key.source)),
                    destination: Some(pb_peer(&key.destination)),
                    // The source side always tunnels over HBONE; the
                    // destination side saw mTLS when the source has a verified identity.
                    mutual_tls: !key.destination_side || !key.source.0.is_empty(),
                });
            }
            let (d, rq, rs) = (series.duration.take(), series.request_bytes.take(), series.response_bytes.take());
            out.deltas.push(pb::RequestDelta {
                id: series.id,
                count: std::mem::take(&mut series.count),
                duration_buckets: d.buckets,
                duration_sum_ms: d.sum,
                request_bytes_buckets: rq.buckets,
                request_bytes_sum: rq.sum as u64,
                response_bytes_buckets: rs.buckets,
                response_bytes_sum: rs.sum as u64,
            });
        }
        out.dropped = std::mem::take(&mut s.dropped);
        (!out.deltas.is_empty() || out.dropped > 0).then_some(out)
    }
}

impl RequestObserver for RequestMetrics {
    fn observe(&self, o: &RequestOutcome) {
        let mut guard = self.state.lock().unwrap();
        let s = &mut *guard;
        let Some(duration_bounds) = s.duration_bounds.as_deref() else { return };
        let key = Key {
            destination_side: o.side == Side::Destination,
            protocol: o.protocol.label(),
            status: o.status,
            grpc_status: o.grpc_status,
            flags: o.response_flags.clone(),
            service: o.service.clone(),
            source: peer(&o.source),
            destination: peer(&o.destination),
        };
        let full = s.series.len() >= MAX_SERIES;
        let series = match s.series.get_mut(&key) {
            Some(series) => series,
            None if full => {
                s.dropped += 1;
                return;
            }
            None => {
                s.next_id += 1;
                let (nd, nb) = (duration_bounds.len(), s.bytes_bounds.len());
                s.series.entry(key).or_insert(Series {
                    id: s.next_id, declared: false, count: 0, duration: Hist::new(nd), request_bytes: Hist::new(nb), response_bytes: Hist::new(nb),
                })
            }
        };
        series.count += 1;
        series.duration.observe(duration_bounds, o.duration.as_secs_f64() * 1000.0);
        series.request_bytes.observe(&s.bytes_bounds, o.request_bytes as f64);
        series.response_bytes.observe(&s.bytes_bounds, o.response_bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::outcome::Protocol;
    use std::time::{Duration, SystemTime};

    fn outcome(status: u16, ms: u64, req: u64, resp: u64) -> RequestOutcome {
        RequestOutcome {
            side: Side::Destination, protocol: Protocol::Http1, method: "GET".into(), authority: "web".into(), path: "/".into(), status,
            grpc_status: None, response_flags: String::new(), start: SystemTime::now(), duration: Duration::from_millis(ms),
            request_bytes: req, response_bytes: resp, upstream: "10.0.0.2:8080".into(), service: "web.shop.svc.cluster.local".into(),
            source: Peer { identity: "spiffe://cluster.local/ns/shop/sa/client".into(), workload: "client".into(), namespace: "shop".into() },
            destination: Peer { identity: "spiffe://cluster.local/ns/shop/sa/web".into(), workload: "web".into(), namespace: "shop".into() },
            traceparent: None,
            trace: None,
            route: String::new(),
            attempts: 0,
        }
    }

    fn configured() -> RequestMetrics {
        let m = RequestMetrics::default();
        m.configure(vec![1.0, 10.0, 100.0], vec![10.0, 1000.0]).unwrap();
        m
    }

    #[test]
    fn nothing_is_counted_before_the_agent_sends_bounds() {
        let m = RequestMetrics::default();
        m.observe(&outcome(200, 5, 0, 0));
        assert!(m.report().is_none());
    }

    #[test]
    fn requests_aggregate_by_series_declared_once() {
        let m = configured();
        m.observe(&outcome(200, 5, 0, 10));
        m.observe(&outcome(200, 50, 20, 2000));
        m.observe(&outcome(503, 0, 0, 0));
        let r = m.report().unwrap();
        assert_eq!(r.series.len(), 2, "one series per status");
        let ok = r.series.iter().find(|s| s.status == 200).unwrap();
        assert!(ok.destination_side && ok.protocol == "http" && ok.response_flags == "-" && ok.grpc_status.is_empty());
        assert_eq!(ok.source.as_ref().unwrap().workload, "client");
        let d = r.deltas.iter().find(|d| d.id == ok.id).unwrap();
        assert_eq!(d.count, 2);
        assert_eq!(d.duration_buckets, vec![0, 1, 1, 0], "5 ms in (1, 10], 50 ms in (10, 100]");
        assert_eq!(d.duration_sum_ms, 55.0);
        assert_eq!(d.request_bytes_buckets, vec![1, 1, 0], "a value equal to a bound is in its bucket (le)");
        assert_eq!(d.request_bytes_sum, 20);
        assert_eq!(d.response_bytes_buckets, vec![1, 0, 1]);
        assert_eq!(d.response_bytes_sum, 2010);

        assert!(m.report().is_none(), "nothing new: nothing to report");
        m.observe(&outcome(200, 500, 0, 0));
        let r = m.report().unwrap();
        assert!(r.series.is_empty(), "declared already");
        assert_eq!(r.deltas.len(), 1);
        assert_eq!((r.deltas[0].id, r.deltas[0].count, r.deltas[0].duration_buckets.clone()), (ok.id, 1, vec![0, 0, 0, 1]), "only the growth");

        m.attached();
        m.observe(&outcome(200, 1, 0, 0));
        assert_eq!(m.report().unwrap().series.len(), 1, "declared again to a new agent");
    }

    #[test]
    fn grpc_status_and_flags_make_series() {
        let m = configured();
        let mut g = outcome(200, 1, 5, 5);
        g.protocol = Protocol::Grpc;
        g.grpc_status = Some(14);
        let mut uo = outcome(503, 0, 0, 0);
        uo.response_flags = "UO".into();
        m.observe(&g);
        m.observe(&uo);
        let r = m.report().unwrap();
        assert!(r.series.iter().any(|s| s.protocol == "grpc" && s.grpc_status == "14"));
        assert!(r.series.iter().any(|s| s.status == 503 && s.response_flags == "UO"));
    }

    #[test]
    fn bad_bounds_are_refused_and_new_bounds_start_afresh() {
        let m = configured();
        assert!(m.configure(vec![10.0, 1.0], vec![]).is_err());
        assert!(m.configure(vec![f64::NAN], vec![]).is_err());
        m.observe(&outcome(200, 5, 0, 0));
        m.configure(vec![1.0, 10.0, 100.0], vec![10.0, 1000.0]).unwrap();
        assert_eq!(m.report().unwrap().deltas[0].count, 1, "the same bounds keep what was aggregated");
        m.observe(&outcome(200, 5, 0, 0));
        m.configure(vec![2.0], vec![]).unwrap();
        assert!(m.report().is_none(), "other bounds: aggregation starts afresh");
        m.observe(&outcome(200, 5, 0, 0));
        assert_eq!(m.report().unwrap().deltas[0].duration_buckets, vec![0, 1]);
    }

    #[test]
    fn retry_counts_ride_with_the_report_or_alone() {
        let m = configured();
        let count = || vec![pb::RetryCount { service: "web.shop.svc.cluster.local".into(), retried: 2, budget_exhausted: 1, mirrored: 0 }];
        assert!(m.report_with(vec![]).is_none());
        let alone = m.report_with(count()).unwrap();
        assert!(alone.deltas.is_empty() && alone.retries[0].retried == 2);
        m.observe(&outcome(200, 1, 0, 0));
        let both = m.report_with(count()).unwrap();
        assert_eq!((both.deltas.len(), both.retries[0].budget_exhausted), (1, 1));
    }

    #[test]
    fn series_beyond_the_cap_are_counted_as_dropped() {
        let m = configured();
        for i in 0..MAX_SERIES + 5 {
            let mut o = outcome(200, 1, 0, 0);
            o.source.workload = format!("c{i}");
            m.observe(&o);
        }
        let r = m.report().unwrap();
        assert_eq!(r.series.len(), MAX_SERIES);
        assert_eq!(r.dropped, 5);
    }
}
