//! Ambit's FaultInjection filter (the Gateway API has none): a delay before
//! a share of requests is forwarded (response flag DI), and an answer made
//! here instead of forwarding for a share (FI): an HTTP status, or for gRPC
//! a grpc-status in a trailers-only answer.
use std::time::Duration;

use crate::control::pb;

/// Whether a request falls in a share given in millionths, for a uniform random `draw`.
pub fn chance(millionths: u32, draw: u64) -> bool {
    draw % 1_000_000 < u64::from(millionths)
}

pub enum Abort {
    Http(u16),
    Grpc(u32),
}

/// What the fault does to one request: a delay, an abort (either, both, none).
pub fn decide(f: &pb::Fault, delay_draw: u64, abort_draw: u64) -> (Option<Duration>, Option<Abort>) {
    let delay = (f.delay_ms > 0 && chance(f.delay_millionths, delay_draw)).then(|| Duration::from_millis(f.delay_ms));
    let abort = chance(f.abort_millionths, abort_draw).then(|| {
        if f.abort_grpc {
            Some(Abort::Grpc(f.abort_grpc_status))
        } else {
            u16::try_from(f.abort_status).ok().filter(|s| (200..600).contains(s)).map(Abort::Http)
        }
    }).flatten();
    (delay, abort)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_in_millionths_pick_that_share_of_requests() {
        let f = pb::Fault { delay_ms: 50, delay_millionths: 250_000, abort_status: 503, abort_millionths: 100_000, ..Default::default() };
        let (mut delayed, mut aborted) = (0, 0);
        for draw in 0..1_000_000u64 {
            let (d, a) = decide(&f, draw, draw.wrapping_mul(7919));
            delayed += usize::from(d == Some(Duration::from_millis(50)));
            aborted += usize::from(matches!(a, Some(Abort::Http(503))));
        }
        assert_eq!((delayed, aborted), (250_000, 100_000));
        assert!(chance(1_000_000, 999_999) && !chance(0, 0));
        let g = pb::Fault { abort_grpc: true, abort_grpc_status: 14, abort_millionths: 1_000_000, ..Default::default() };
        assert!(matches!(decide(&g, 0, 3), (None, Some(Abort::Grpc(14)))), "gRPC abort, and no delay without delay_ms");
        let bad = pb::Fault { abort_status: 70_000, abort_millionths: 1_000_000, ..Default::default() };
        assert!(decide(&bad, 0, 0).1.is_none(), "a status HTTP does not have aborts nothing");
    }
}
