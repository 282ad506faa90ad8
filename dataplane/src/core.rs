//! What the inbound and outbound halves share: the link to the agent, the
//! connection ids the agent knows them by, the questions waiting for the
//! agent's answer, the live tunnels (their byte counts, the agent's tag, and
//! how the agent closes them), what happened while no agent was attached,
//! and the drain (`drained` once no HBONE connection of either half is left).
//!
//! The agent can go away (a crash, a restart) while this process goes on
//! carrying established connections. A question asked meanwhile waits up to
//! QUESTION_WAIT for an agent to attach and answer it, and is asked again of
//! the agent that attaches; unanswered, the connection is refused and
//! counted. A connection that ends meanwhile is kept (bounded) for the next
//! agent, with its tag, so that no record is lost.
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use crate::admission::{AcceptFailure, Reserve};
use crate::control::{listener_error, pb, Out, Outbox};
use crate::l7::outcome::Observers;
use crate::spans::Spans;
use crate::relay::{self, Counts};

/// How long a question (a peer's identity, a connection's route or verdict)
/// waits while no agent is attached: how long a restarting agent has to come
/// back before new connections are refused.
pub const QUESTION_WAIT: Duration = Duration::from_secs(5);
/// How long it waits for an attached agent. One answers in well under a
/// millisecond, but a burst (thousands of connections at once) queues behind
/// the agent's one thread; only a wedged agent takes this long.
pub const QUESTION_WAIT_ATTACHED: Duration = Duration::from_secs(30);
/// Connections that ended while no agent was attached, kept for the next one.
const ENDED_AWAY_MAX: usize = 10_000;

/// A tunnel that is open: its byte counts, the agent's tag, and how the agent closes it.
struct Live {
    from_source: Arc<AtomicU64>,
    to_source: Arc<AtomicU64>,
    reported: (u64, u64),
    /// What the agent said of the connection when it routed or admitted it
    /// (opaque here): given back to an agent that attaches later.
    tag: String,
    close: Option<oneshot::Sender<()>>,
}

pub struct Core {
    pub outbox: Outbox,
    live: Mutex<HashMap<u64, Live>>,
    /// Questions asked and not yet answered, by id: asked again of an agent that attaches.
    pending: Mutex<BTreeMap<u64, Out>>,
    attached: watch::Sender<bool>,
    /// `end` messages of connections that ended while no agent was attached.
    ended_away: Mutex<Vec<pb::End>>,
    /// Connections refused because no agent answered in time, by what was asked.
    refused_away: Mutex<BTreeMap<&'static str, u64>>,
    next_id: AtomicU64,
    /// HBONE connections (served or dialled) not yet closed and lingered out.
    open_sessions: AtomicUsize,
    draining: watch::Sender<bool>,
    drained_said: AtomicBool,
    /// The spare descriptor every accept loop falls back on (admission.rs).
    pub reserve: Reserve,
    /// RLIMIT_NOFILE at start: the listeners' caps are shares of it.
    pub nofile: u64,
    /// Who hears of each finished HTTP request (l7/outcome.rs); none by default.
    #[allow(dead_code)]
    pub observers: Observers,
    /// Request trace context and spans (spans.rs): one of the observers, off until the agent says `tracing`.
    pub spans: Arc<Spans>,
}

impl Core {
    pub fn new(outbox: Outbox, nofile: u64) -> Arc<Self> {
        let spans = Arc::new(Spans::default());
        let observers = Observers::default();
        observers.add(spans.clone());
        Arc::new(Core {
            outbox,
            live: Mutex::new(HashMap::new()),
            pending: Mutex::new(BTreeMap::new()),
            attached: watch::channel(false).0,
            ended_away: Mutex::new(Vec::new()),
            refused_away: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            open_sessions: AtomicUsize::new(0),
            draining: watch::channel(false).0,
            drained_said: AtomicBool::new(false),
            reserve: Reserve::default(),
            nofile,
            observers,
            spans,
        })
    }

    /// A new id for a session, a stream or an outbound connection; one space for all.
    pub fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn draining(&self) -> bool {
        *self.draining.borrow()
    }

    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    pub fn drain(&self) {
        self.draining.send_replace(true);
        self.maybe_drained();
    }

    pub fn session_opened(&self) {
        self.open_sessions.fetch_add(1, Ordering::SeqCst);
        // A connection opened while draining (a tunnel the agent routed just
        // before its drain) must be waited for: `drained` is said again once
        // it is over.
        self.drained_said.store(false, Ordering::SeqCst);
    }

    pub fn session_closed(&self) {
        self.open_sessions.fetch_sub(1, Ordering::SeqCst);
        self.maybe_drained();
    }

    fn maybe_drained(&self) {
        if self.draining() && self.open_sessions.load(Ordering::SeqCst) == 0 && !self.drained_said.swap(true, Ordering::SeqCst) {
            self.outbox.send(Out::Drained(pb::Drained {}));
        }
    }

    /// Asks the agent `question` (its id is `id`) and waits for the answer on
    /// `rx`, at most QUESTION_WAIT; None when no agent answered in time (then
    /// counted under `what`, and the caller refuses the connection).
    pub async fn ask<T>(&self, id: u64, what: &'static str, question: Out, rx: oneshot::Receiver<T>) -> Option<T> {
        {
            // Under the lock, so that an agent attaching meanwhile gets it
            // exactly once: asked again in its hello, or sent after it.
            let mut pending = self.pending.lock().unwrap();
            pending.insert(id, question.clone());
            self.outbox.send(question);
        }
        // The clock runs by the agent's state, starting again when it changes:
        // an agent that attaches has QUESTION_WAIT_ATTACHED to answer.
        let mut attached = self.attached.subscribe();
        let mut rx = std::pin::pin!(rx);
        let answer = loop {
            let wait = if *attached.borrow_and_update() { QUESTION_WAIT_ATTACHED } else { QUESTION_WAIT };
            tokio::select! {
                a = &mut rx => break a.ok(),
                changed = attached.changed() => if changed.is_err() { break None },
                _ = tokio::time::sleep(wait) => break None,
            }
        };
        self.pending.lock().unwrap().remove(&id);
        match answer {
            Some(a) => Some(a),
            None => {
                *self.refused_away.lock().unwrap().entry(what).or_default() += 1;
                None
            }
        }
    }

    /// An agent attached on `to`: it reads first what it must know
    /// (`hello`: this process, its listeners, the live connections with their
    /// tags, those that ended and those refused while no agent was there),
    /// then every question still waiting, then whatever comes after.
    pub fn attach(&self, to: OwnedWriteHalf, protocol: u32, addr: &str, listeners: Vec<pb::BoundListener>) {
        // Both locks, in this order (ended, then ask take one each): nothing
        // ends or is asked between what hello says and what follows it.
        let mut away = self.ended_away.lock().unwrap();
        let pending = self.pending.lock().unwrap();
        self.attached.send_replace(true);
        let live: Vec<pb::Live> = self.live.lock().unwrap().iter().map(|(id, l)| pb::Live {
            id: *id, tag: l.tag.clone(), from_source: l.from_source.load(Ordering::Relaxed), to_source: l.to_source.load(Ordering::Relaxed),
        }).collect();
        let ended = std::mem::take(&mut *away);
        let refused = std::mem::take(&mut *self.refused_away.lock().unwrap());
        let refused_away = refused.into_iter().map(|(what, n)| (what.to_string(), n)).collect();
        let mut first = vec![Out::Hello(pb::Hello {
            protocol, pid: std::process::id(), addr: addr.to_string(),
            listeners, live, ended, refused_away,
        })];
        first.extend(pending.values().cloned());
        self.outbox.attach(to, first);
    }

    /// The agent went away: what happens from now on is kept for the next one.
    pub fn detach(&self) {
        let _away = self.ended_away.lock().unwrap();
        self.attached.send_replace(false);
        self.outbox.detach();
    }

    pub fn attached(&self) -> bool {
        *self.attached.borrow()
    }

    /// Live tunnels and HBONE connections: while there are any, this process has work without an agent.
    pub fn busy(&self) -> bool {
        !self.live.lock().unwrap().is_empty() || self.open_sessions.load(Ordering::SeqCst) > 0
    }

    /// Registers a tunnel that starts relaying, with the agent's `tag`; the receiver fires when the agent closes it.
    pub fn live(&self, id: u64, counts: &Counts, tag: String) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.live.lock().unwrap().insert(id, Live { from_source: counts.from_source.clone(), to_source: counts.to_source.clone(), reported: (0, 0), tag, close: Some(tx) });
        self.outbox.send(Out::Open(pb::Open { id }));
        rx
    }

    /// The tunnel is over: says so with its final counts and why (empty: a
    /// clean end). With no agent attached, it is kept (with its tag) for the next.
    pub fn ended(&self, id: u64, counts: &Counts, error: Option<String>) {
        let live = self.live.lock().unwrap().remove(&id);
        let end = pb::End {
            id,
            from_source: counts.from_source.load(Ordering::Relaxed), to_source: counts.to_source.load(Ordering::Relaxed),
            error: error.unwrap_or_default(),
            tag: live.map(|l| l.tag).unwrap_or_default(),
            ..Default::default()
        };
        let mut away = self.ended_away.lock().unwrap();
        if !self.attached() && away.len() < ENDED_AWAY_MAX {
            away.push(end);
        } else {
            self.outbox.send(Out::End(end));
        }
    }

    /// Relays an open tunnel (its socket end `is_source` outbound, the
    /// workload inbound) until both directions are over or the agent closes
    /// it, then reports its end. Closed or failed, both sides are reset: the
    /// stream with CANCEL, the socket with RST (linger 0).
    pub async fn tunnel(&self, id: u64, tag: String, mut tcp: TcpStream, mut send: SendStream<Bytes>, recv: RecvStream, is_source: bool) {
        let counts = Counts::default();
        let closed = self.live(id, &counts, tag);
        let error = tokio::select! {
            e = relay::run(&mut tcp, &mut send, recv, counts.directions(is_source)) => e,
            _ = closed => Some("closed by the agent".to_string()),
        };
        if error.is_some() {
            // Cut, not finished: both ends see a reset (the stream CANCEL, the
            // socket RST), so an application never takes a cut for a clean end.
            send.send_reset(Reason::CANCEL);
            let _ = tcp.set_zero_linger();
        }
        drop(tcp);
        self.ended(id, &counts, error);
    }

    /// Binds a listener the agent asked for (its name `lid`), records where
    /// it listens and says so (`bound`); on failure says why (`error`) and
    /// gives None.
    pub async fn bind(&self, lid: &AtomicU64, addr: &str, bound_at: &Mutex<Option<String>>) -> Option<TcpListener> {
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                self.outbox.send(listener_error(lid.load(Ordering::SeqCst), format!("cannot listen on {addr}: {e}")));
                return None;
            }
        };
        let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        *bound_at.lock().unwrap() = Some(bound.clone());
        self.outbox.send(Out::Bound(pb::Bound { lid: lid.load(Ordering::SeqCst), addr: bound }));
        Some(listener)
    }

    /// The next connection on `listener` (`what`, for the log), or None once
    /// the drain starts. A failed accept is handled here (admission.rs,
    /// Reserve): a connection closed for want of descriptors is reported as
    /// `descriptor_limit` in `direction`; anything else pauses, never spins.
    pub async fn accept(&self, listener: &TcpListener, draining: &mut watch::Receiver<bool>, what: &str, direction: pb::Direction) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = until_true(draining) => return None,
            };
            match accepted {
                Ok(a) => {
                    self.reserve.accepted();
                    return Some(a);
                }
                Err(e) => match self.reserve.accept_failed(listener, &e, what).await {
                    AcceptFailure::Closed => self.outbox.send(Out::Refused(pb::Refused {
                        direction: direction as i32,
                        reason: "descriptor_limit".into(),
                        error: format!("out of file descriptors accepting on {what}"),
                    })),
                    AcceptFailure::Pause(d) => tokio::time::sleep(d).await,
                },
            }
        }
    }

    /// Relays a plain connection (the socket end is the source's: a
    /// destination outside the mesh, or plaintext to a local workload) until
    /// both directions are over or the agent closes it (both ends reset),
    /// then reports its end.
    pub async fn pipe(&self, id: u64, tag: String, mut tcp: TcpStream, mut upstream: TcpStream) {
        let counts = Counts::default();
        let closed = self.live(id, &counts, tag);
        let error = tokio::select! {
            e = relay::tcp_pair(&mut tcp, &mut upstream, counts.directions(true)) => e,
            _ = closed => {
                let _ = tcp.set_zero_linger();
                let _ = upstream.set_zero_linger();
                Some("closed by the agent".to_string())
            }
        };
        self.ended(id, &counts, error);
    }

    pub fn close(&self, id: u64) {
        if let Some(live) = self.live.lock().unwrap().get_mut(&id) {
            if let Some(tx) = live.close.take() {
                let _ = tx.send(());
            }
        }
    }

    /// Reports the byte counts of live tunnels that moved since the last
    /// report, so the agent's counters follow long-lived connections.
    pub fn report_bytes(&self) {
        let mut changed = Vec::new();
        for (id, live) in self.live.lock().unwrap().iter_mut() {
            let now = (live.from_source.load(Ordering::Relaxed), live.to_source.load(Ordering::Relaxed));
            if now != live.reported {
                live.reported = now;
                changed.push(pb::Count { id: *id, from_source: now.0, to_source: now.1 });
            }
        }
        if !changed.is_empty() {
            self.outbox.send(Out::Bytes(pb::ByteCounts { counts: changed }));
        }
    }
}

/// Resolves once the flag is set; never, if the flag's sender is gone.
pub async fn until_true(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|set| *set).await.is_err() {
        std::future::pending::<()>().await;
    }
}
