//! What the inbound and outbound halves share: the pipe to the agent, the
//! connection ids the agent knows them by, the live tunnels (their byte
//! counts and how the agent closes them), and the drain (`drained` once no
//! HBONE connection of either half is left).
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

use crate::control::Outbox;
use crate::relay::{self, Counts};

/// A tunnel that is open: its byte counts, and how the agent closes it.
struct Live {
    from_source: Arc<AtomicU64>,
    to_source: Arc<AtomicU64>,
    reported: (u64, u64),
    close: Option<oneshot::Sender<()>>,
}

pub struct Core {
    pub outbox: Outbox,
    live: Mutex<HashMap<u64, Live>>,
    next_id: AtomicU64,
    /// HBONE connections (served or dialled) not yet closed and lingered out.
    open_sessions: AtomicUsize,
    draining: watch::Sender<bool>,
    drained_said: AtomicBool,
}

impl Core {
    pub fn new(outbox: Outbox) -> Arc<Self> {
        Arc::new(Core {
            outbox,
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            open_sessions: AtomicUsize::new(0),
            draining: watch::channel(false).0,
            drained_said: AtomicBool::new(false),
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
            self.outbox.send(json!({ "t": "drained" }));
        }
    }

    /// Registers a tunnel that starts relaying; the receiver fires when the agent closes it.
    pub fn live(&self, id: u64, counts: &Counts) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.live.lock().unwrap().insert(id, Live { from_source: counts.from_source.clone(), to_source: counts.to_source.clone(), reported: (0, 0), close: Some(tx) });
        self.outbox.send(json!({ "t": "open", "id": id }));
        rx
    }

    /// The tunnel is over: says so with its final counts and why (empty: a clean end).
    pub fn ended(&self, id: u64, counts: &Counts, error: Option<String>) {
        self.live.lock().unwrap().remove(&id);
        self.outbox.send(json!({
            "t": "end", "id": id,
            "fromSource": counts.from_source.load(Ordering::Relaxed), "toSource": counts.to_source.load(Ordering::Relaxed),
            "error": error.unwrap_or_default(),
        }));
    }

    /// Relays an open tunnel (its socket end `is_source` outbound, the
    /// workload inbound) until both directions are over or the agent closes
    /// it, then reports its end. Closed or failed, both sides are reset: the
    /// stream with CANCEL, the socket with RST (linger 0).
    pub async fn tunnel(&self, id: u64, mut tcp: TcpStream, mut send: SendStream<Bytes>, recv: RecvStream, is_source: bool) {
        let counts = Counts::default();
        let closed = self.live(id, &counts);
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
                changed.push(json!([id, now.0, now.1]));
            }
        }
        if !changed.is_empty() {
            self.outbox.send(json!({ "t": "bytes", "c": changed }));
        }
    }
}

/// Resolves once the flag is set; never, if the flag's sender is gone.
pub async fn until_true(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|set| *set).await.is_err() {
        std::future::pending::<()>().await;
    }
}
