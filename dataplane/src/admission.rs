//! Connection floods on the listeners that authenticate their clients
//! (HBONE :15008, SOCKS5): connections that have not authenticated yet are
//! capped per source address and in all, and the accept loops keep a spare
//! descriptor so that running out of descriptors neither spins nor leaves
//! connections queued in the backlog.
//!
//! Per source: past PER_SOURCE unauthenticated connections from one
//! address, a new one is closed at once (`too_many_handshakes`). In all: at
//! the cap (a share of RLIMIT_NOFILE, `pending_cap`), the oldest
//! unauthenticated connection is closed to admit the new one
//! (`handshake_evicted`), as the controller's gRPC port does
//! (shared/connection-admission.ts): a flood only shortens its own
//! connections' lives, while a real client, whose handshake takes
//! milliseconds, is never the oldest. Authenticated connections (and the
//! workloads' relays on the upstream and capture listeners, which may idle
//! for as long as they like) count for neither.
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Unauthenticated connections from one source address, at most: the
/// controller's default (`--max-connections-per-source`). A node's agent
/// opens one HBONE connection per (source identity, destination identity)
/// and completes its handshake in milliseconds, so 32 at once from one
/// address is a flood, not a busy peer.
pub const PER_SOURCE: usize = 32;

/// Unauthenticated connections in all, at most, on one listener: a quarter
/// of the descriptor limit (within 32..=16384), so that a flood on both
/// HBONE and SOCKS5 holds at most half the descriptors and the other half
/// stays for established tunnels, their workload dials and the HBONE client
/// pool's dials.
pub fn pending_cap(nofile: u64) -> usize {
    usize::try_from(nofile / 4).unwrap_or(usize::MAX).clamp(32, 16_384)
}

/// The process's soft descriptor limit (RLIMIT_NOFILE), read once at start;
/// 1024 (Linux's usual default) when it cannot be read; unlimited as 1 << 20.
pub fn nofile_limit() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    if r.rlim_cur == libc::RLIM_INFINITY { 1 << 20 } else { r.rlim_cur }
}

#[derive(Default)]
struct State {
    by_source: HashMap<IpAddr, usize>,
    /// By admission order (oldest first): the source and how to close it.
    pending: BTreeMap<u64, (IpAddr, oneshot::Sender<()>)>,
    next: u64,
}

impl State {
    fn forget(&mut self, ip: IpAddr) {
        if let Some(n) = self.by_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&ip);
            }
        }
    }
}

/// The unauthenticated connections of one listener.
pub struct Admission {
    per_source: usize,
    total: usize,
    state: Mutex<State>,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its source address is at PER_SOURCE.
    PerSource,
}

/// An admitted connection that has not authenticated yet; dropping it (the
/// connection authenticated, or is closed) lets another in. `evicted` fires
/// when it is the oldest and must make way.
pub struct Pending {
    admission: Arc<Admission>,
    seq: u64,
    ip: IpAddr,
    pub evicted: oneshot::Receiver<()>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut s = self.admission.state.lock().unwrap();
        // An evicted one was forgotten when it was evicted.
        if s.pending.remove(&self.seq).is_some() {
            s.forget(self.ip);
        }
    }
}

impl Admission {
    pub fn new(per_source: usize, total: usize) -> Arc<Self> {
        Arc::new(Admission { per_source, total: total.max(1), state: Mutex::new(State::default()) })
    }

    /// Admits a new connection from `ip`: refused past the per-source cap;
    /// at the total cap the oldest pending connection is told to close
    /// (returned true in the second place: one was evicted).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<(Pending, bool), Refusal> {
        let mut s = self.state.lock().unwrap();
        if s.by_source.get(&ip).copied().unwrap_or(0) >= self.per_source {
            return Err(Refusal::PerSource);
        }
        let mut evicted = false;
        while s.pending.len() >= self.total {
            let Some((_, (old_ip, close))) = s.pending.pop_first() else { break };
            s.forget(old_ip);
            let _ = close.send(());
            evicted = true;
        }
        let seq = s.next;
        s.next += 1;
        let (tx, rx) = oneshot::channel();
        s.pending.insert(seq, (ip, tx));
        *s.by_source.entry(ip).or_default() += 1;
        Ok((Pending { admission: self.clone(), seq, ip, evicted: rx }, evicted))
    }

    /// Pending connections (in all, and from `ip`).
    #[cfg(test)]
    pub fn pending(&self, ip: IpAddr) -> (usize, usize) {
        let s = self.state.lock().unwrap();
        (s.pending.len(), s.by_source.get(&ip).copied().unwrap_or(0))
    }
}

/// A spare descriptor, shared by every accept loop, and the state of a
/// burst of accept failures. When accept fails for want of descriptors
/// (EMFILE, ENFILE), the spare is released, the waiting connection accepted
/// and closed at once (its client sees a close, not a hang in the
/// backlog), and the spare taken again: the loop neither spins on a
/// backlog it cannot drain nor sleeps while clients wait.
pub struct Reserve {
    spare: Mutex<Option<File>>,
    in_burst: AtomicBool,
    closed_in_burst: AtomicU64,
}

/// What the accept loop does after a failed accept.
pub enum AcceptFailure {
    /// A connection was accepted and closed for want of descriptors: count it.
    Closed,
    /// Nothing to count (a peer that reset before it was accepted, or no
    /// spare to release): the loop pauses for the given time.
    Pause(Duration),
}

impl Default for Reserve {
    fn default() -> Self {
        Reserve { spare: Mutex::new(File::open("/dev/null").ok()), in_burst: AtomicBool::new(false), closed_in_burst: AtomicU64::new(0) }
    }
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

impl Reserve {
    /// After `listener`'s accept failed with `e`. Logged on stderr once per burst.
    pub async fn accept_failed(&self, listener: &TcpListener, e: &std::io::Error, what: &str) -> AcceptFailure {
        if !out_of_descriptors(e) {
            // ECONNABORTED and the like: the next accept is another connection.
            return AcceptFailure::Pause(Duration::ZERO);
        }
        if !self.in_burst.swap(true, Ordering::SeqCst) {
            eprintln!("ambit-dataplane: out of file descriptors ({e}) accepting on {what}; new connections are closed at once until descriptors free up");
        }
        let spare = self.spare.lock().unwrap().take();
        if spare.is_none() {
            // Another loop holds the freed slot, or the spare could not be
            // taken again: wait for descriptors rather than spin.
            *self.spare.lock().unwrap() = File::open("/dev/null").ok();
            return AcceptFailure::Pause(Duration::from_millis(50));
        }
        drop(spare);
        let accepted = std::future::poll_fn(|cx| Poll::Ready(listener.poll_accept(cx))).await;
        let closed = matches!(accepted, Poll::Ready(Ok(_)));
        if let Poll::Ready(Ok((tcp, _))) = accepted {
            let _ = tcp.set_zero_linger();
        }
        *self.spare.lock().unwrap() = File::open("/dev/null").ok();
        if closed {
            self.closed_in_burst.fetch_add(1, Ordering::SeqCst);
            AcceptFailure::Closed
        } else {
            AcceptFailure::Pause(Duration::from_millis(10))
        }
    }

    /// A connection was accepted: a burst, if there was one, is over.
    pub fn accepted(&self) {
        if self.in_burst.load(Ordering::Relaxed) && self.in_burst.swap(false, Ordering::SeqCst) {
            let n = self.closed_in_burst.swap(0, Ordering::SeqCst);
            eprintln!("ambit-dataplane: accepting again; {n} connections were closed for want of file descriptors");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 113, last])
    }

    #[test]
    fn caps_each_source_and_forgets_on_drop() {
        let a = Admission::new(2, 100);
        let first = a.admit(ip(1)).unwrap().0;
        let second = a.admit(ip(1)).unwrap().0;
        assert_eq!(a.admit(ip(1)).err(), Some(Refusal::PerSource), "a third from one source is refused");
        let other = a.admit(ip(2)).expect("another source is not limited by the first");
        assert_eq!(a.pending(ip(1)), (3, 2));
        drop(first);
        assert_eq!(a.pending(ip(1)), (2, 1));
        let again = a.admit(ip(1)).expect("a slot freed when one authenticated or closed");
        drop((second, other, again));
        assert_eq!(a.pending(ip(1)), (0, 0), "nothing left behind");
        assert!(a.state.lock().unwrap().by_source.is_empty());
    }

    #[test]
    fn at_the_total_the_oldest_is_evicted() {
        let a = Admission::new(10, 3);
        let mut held: Vec<Pending> = (1..=3).map(|n| a.admit(ip(n)).unwrap().0).collect();
        let (newest, evicted) = a.admit(ip(9)).unwrap();
        assert!(evicted, "the fourth evicted one");
        assert_eq!(held[0].evicted.try_recv(), Ok(()), "the oldest was told to close");
        assert!(held[1].evicted.try_recv().is_err() && held[2].evicted.try_recv().is_err(), "the others were not");
        assert_eq!(a.pending(ip(1)), (3, 0), "the evicted one's source no longer counts it");
        // The evicted connection closing later does not free another's slot.
        drop(held.remove(0));
        assert_eq!(a.pending(ip(9)), (3, 1));
        drop(held);
        drop(newest);
        assert_eq!(a.pending(ip(9)), (0, 0));
    }

    #[test]
    fn an_evicting_source_cannot_pass_its_own_cap() {
        let a = Admission::new(2, 2);
        let _x = a.admit(ip(1)).unwrap();
        let _y = a.admit(ip(1)).unwrap();
        assert_eq!(a.admit(ip(1)).err(), Some(Refusal::PerSource), "refused before it may evict anyone");
        assert!(a.admit(ip(2)).unwrap().1, "another source evicts the oldest");
    }

    #[test]
    fn the_cap_is_a_share_of_the_descriptor_limit() {
        assert_eq!(pending_cap(256), 64);
        assert_eq!(pending_cap(1024), 256);
        assert_eq!(pending_cap(16), 32);
        assert_eq!(pending_cap(u64::MAX), 16_384);
        assert!(nofile_limit() > 0);
    }
}
