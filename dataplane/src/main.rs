//! ambit-dataplane: the agent's one data path (docs/dataplane.md): every
//! data-path listener (inbound HBONE, SOCKS5, upstream listeners, transparent
//! capture), the HBONE client pool, and the relay. Started by `ambit-agent`,
//! never by hand:
//!
//!   ambit-dataplane --listen HOST:PORT --control PATH
//!
//! It binds HBONE on HOST:PORT and a Unix socket at PATH (mode 0600), says
//! `{"t":"ready","addr":…,"control":…,"protocol":N,"pid":…}` on stdout (the
//! only line it ever writes there, one JSON object: the agent reads it
//! before the control socket exists; a start that fails says
//! `{"t":"error","code":…,"message":…}` instead), and then serves the agent
//! that connects to PATH (control.rs: length-delimited protobuf): one at a
//! time, a new one replacing the old. It is its own process with its own lifetime: when
//! the agent goes away (a crash, a restart) established connections go on,
//! and the agent that starts next attaches to this process again (core.rs
//! says what it is told then). It exits when the agent says `exit` (the
//! agent stops for good), or when it has had no agent and no connection for
//! ORPHAN_AFTER.
mod admission;
mod control;
mod core;
mod hbone_head;
mod inbound;
mod l7;
mod linger;
mod original_dst;
mod outbound;
mod relay;
mod socket_owner;
mod socks5;
mod spans;
mod tls;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::BufReader;
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::mpsc;

use control::{listener_error, pb, In, Out, Outbox};
use core::Core;
use inbound::{Decision, Inbound};
use l7::access_log::{AccessLog, Sink};
use l7::metrics::RequestMetrics;
use outbound::{Entry, Outbound};

/// How often live tunnels' byte counts go to the agent.
const BYTES_EVERY: Duration = Duration::from_millis(1000);
/// With no agent attached and nothing to carry for this long, the process
/// exits: its agent is not coming back (it was removed, or stopped without
/// its drain), and the next one starts a data plane of its own.
const ORPHAN_AFTER: Duration = Duration::from_secs(60);

fn fail(message: String) -> ! {
    println!("{}", json!({ "t": "error", "code": "AMBIT_ERR_INTERNAL", "message": message }));
    std::process::exit(2);
}

/// A listener the agent asked for; `lid` is the agent's name for it, which
/// an agent that attaches later may change (listen is idempotent by address and kind).
struct ListenerEntry {
    lid: Arc<AtomicU64>,
    addr: String,
    kind: pb::ListenerKind,
    bound: Arc<Mutex<Option<String>>>,
}

/// What an agent's messages act on.
struct Dispatch {
    core: Arc<Core>,
    outbox: Outbox,
    inbound: Arc<Inbound>,
    outbound: Arc<Outbound>,
    tls: Arc<RwLock<Option<Arc<tls::Tls>>>>,
    listeners: Mutex<Vec<ListenerEntry>>,
    requests: Arc<RequestMetrics>,
    access_log: Arc<AccessLog>,
}

impl Dispatch {
    async fn handle(&self, m: In) {
        match m {
            In::Config(pb::Config { rev, bundle, identities }) => match tls::config(&bundle, &identities, &self.outbox) {
                Ok(config) => {
                    *self.tls.write().unwrap() = Some(Arc::new(config));
                    self.outbox.send(Out::Ack(pb::Ack { rev }));
                }
                Err(message) => self.outbox.send(Out::Nack(pb::Nack { rev, message })),
            },
            In::Session(pb::SessionVerdict { sid, ok }) => self.inbound.session_verdict(sid, ok),
            // A status beyond u16 is none HTTP knows: 0, which the answer head turns into 500.
            In::Decide(d) => self.inbound.decide(d.id, Decision { status: u16::try_from(d.status).unwrap_or(0), reason: d.reason, dial: d.dial, timeout_ms: d.timeout_ms, tag: d.tag, http: d.http }),
            In::RequestPolicy(u) => self.inbound.http.update(u.id, &u.policy.unwrap_or_default()),
            In::Close(pb::Close { id }) => self.core.close(id),
            In::Listen(l) => match pb::ListenerKind::try_from(l.kind) {
                Ok(kind) => self.listen(l.lid, l.addr, kind),
                Err(_) => self.outbox.send(listener_error(l.lid, format!("unknown listener kind {}", l.kind))),
            },
            In::Route(route) => self.outbound.route(route),
            In::HttpServices(m) => self.outbound.l7.services.apply(m),
            // A table that does not compile is refused whole (its previous one
            // stays): the agent validated it, so this is a bug worth its log.
            In::HttpRoutes(m) => {
                for (key, reason) in self.outbound.l7.routes.apply(m) {
                    let message = format!("route table {key} refused, its previous one stays: {reason}");
                    eprintln!("ambit-dataplane: {message}");
                    self.outbox.send(Out::Error(pb::Error { lid: None, code: "AMBIT_ERR_INTERNAL".into(), message }));
                }
            }
            In::Peer(pb::PeerVerdict { pid, ok }) => self.outbound.peer_verdict(pid, ok),
            In::Drain(_) => {
                self.outbound.drain();
                self.core.drain();
            }
            In::RequestTelemetry(t) => {
                self.access_log.enable(t.access_log);
                if let Err(message) = self.requests.configure(t.duration_bounds_ms, t.bytes_bounds) {
                    eprintln!("ambit-dataplane: {message}; request metrics keep the bounds they had");
                    self.outbox.send(Out::Error(pb::Error { lid: None, code: "AMBIT_ERR_INTERNAL".into(), message }));
                }
            }
            In::Tracing(t) => self.core.spans.configure(&t),
            In::Exit(_) => {
                // The agent exports what it is sent before it stops.
                self.core.spans.flush(&self.outbox);
                let _ = tokio::time::timeout(Duration::from_secs(1), self.outbox.written()).await;
                std::process::exit(0);
            }
        }
    }

    /// Serves a listener, or answers for the one already served at that
    /// address (bound for an agent before this one), now under `lid`.
    fn listen(&self, lid: u64, addr: String, kind: pb::ListenerKind) {
        let mut listeners = self.listeners.lock().unwrap();
        if let Some(l) = listeners.iter().find(|l| l.addr == addr && l.kind == kind) {
            l.lid.store(lid, Ordering::SeqCst);
            if let Some(bound) = l.bound.lock().unwrap().clone() {
                self.outbox.send(Out::Bound(pb::Bound { lid, addr: bound }));
            }
            return;
        }
        let entry = match kind {
            pb::ListenerKind::Plaintext => None,
            pb::ListenerKind::Upstream => Some(Entry::Upstream),
            pb::ListenerKind::Socks5 => Some(Entry::Socks5),
            pb::ListenerKind::Capture => Some(Entry::Capture),
        };
        let l = ListenerEntry { lid: Arc::new(AtomicU64::new(lid)), addr: addr.clone(), kind, bound: Arc::new(Mutex::new(None)) };
        let (cell, bound) = (l.lid.clone(), l.bound.clone());
        listeners.push(l);
        match entry {
            None => {
                tokio::spawn(self.inbound.clone().listen_plaintext(cell, addr, bound));
            }
            Some(entry) => {
                tokio::spawn(self.outbound.clone().listen(cell, addr, entry, bound));
            }
        }
    }

    /// The listeners bound so far, for the hello of an agent that attaches.
    fn listeners(&self) -> Vec<pb::BoundListener> {
        self.listeners.lock().unwrap().iter().filter_map(|l| {
            let bound = l.bound.lock().unwrap().clone()?;
            Some(pb::BoundListener { lid: l.lid.load(Ordering::SeqCst), addr: l.addr.clone(), kind: l.kind as i32, bound })
        }).collect()
    }
}

/// Binds the control socket at `path`: refused if a data plane already
/// answers there (the agent attaches to that one instead); a socket file
/// left by a process that died is replaced.
fn bind_control(path: &str) -> UnixListener {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        fail(format!("another ambit-dataplane already serves {path}"));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).unwrap_or_else(|e| fail(format!("cannot listen on {path}: {e}")));
    // Only the agent's user (and root) may drive this process: it holds every local workload's key.
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        fail(format!("cannot restrict {path} to its owner: {e}"));
    }
    listener
}

/// An agent's connection is taken only from this process's own user or root
/// (the socket's mode says so too; this holds if the mode is changed).
fn trusted(stream: &UnixStream) -> bool {
    let me = unsafe { libc::geteuid() };
    stream.peer_cred().map(|c| c.uid() == me || c.uid() == 0).unwrap_or(false)
}

/// Reads one agent's messages until its connection ends; then says which
/// agent it was (its connection is then closed, and established connections
/// go on for the next agent). What cannot be read is logged on stderr (the
/// data plane's log) and, while the agent can still hear, told to it: a
/// frame that does not decode is skipped (the framing is intact); a
/// truncated, oversized or unframed one ends this agent's connection (no
/// later byte can be trusted to start a frame).
async fn read_agent(dispatch: Arc<Dispatch>, from: OwnedReadHalf, generation: u64, gone: mpsc::UnboundedSender<u64>) {
    let mut from = BufReader::with_capacity(64 * 1024, from);
    let mut frame = Vec::new();
    loop {
        match control::read_frame(&mut from, &mut frame).await {
            Ok(true) => match control::decode(&frame) {
                Ok(m) => dispatch.handle(m).await,
                Err(e) => {
                    eprintln!("ambit-dataplane: skipped an unreadable control message from the agent: {e}");
                    dispatch.outbox.send(Out::Error(pb::Error { lid: None, code: "AMBIT_ERR_INTERNAL".into(), message: format!("unreadable control message: {e}") }));
                }
            },
            Ok(false) => break,
            Err(e) => {
                eprintln!("ambit-dataplane: {e}; closing this agent's control connection (established connections go on)");
                if matches!(e, control::FrameError::Oversized { .. } | control::FrameError::BadLength) {
                    dispatch.outbox.send(Out::Error(pb::Error { lid: None, code: "AMBIT_ERR_INTERNAL".into(), message: e.to_string() }));
                    dispatch.outbox.written().await;
                }
                break;
            }
        }
    }
    let _ = gone.send(generation);
}

async fn run(listen: String, control_path: String) {
    let listener = TcpListener::bind(&listen).await.unwrap_or_else(|e| fail(format!("cannot listen on {listen}: {e}")));
    let control = bind_control(&control_path);
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let (outbox, queue) = control::outbox();
    tokio::spawn(control::write_loop(queue));
    let core = Core::new(outbox.clone(), admission::nofile_limit());
    tokio::spawn(core.spans.clone().run(outbox.clone()));
    let tls_state = Arc::new(RwLock::new(None));
    let inbound = Inbound::new(core.clone(), tls_state.clone());
    let outbound = Outbound::new(core.clone(), tls_state.clone());
    tokio::spawn(inbound.clone().serve(listener));
    // Finished HTTP requests: aggregated for the agent, and logged here.
    let requests = Arc::new(RequestMetrics::default());
    let access_log = Arc::new(AccessLog::new(Sink::stderr()));
    core.observers.add(requests.clone());
    core.observers.add(access_log.clone());
    let (ticker, sweeper, http, reporter, retries) = (core.clone(), outbound.clone(), inbound.http.clone(), requests.clone(), outbound.l7.retries.clone());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(BYTES_EVERY);
        loop {
            every.tick().await;
            ticker.report_bytes();
            if let Some(denials) = http.report() {
                ticker.outbox.send(denials);
            }
            // While no agent is attached requests keep aggregating, for the next.
            if ticker.attached() {
                if let Some(stats) = reporter.report_with(retries.take()) {
                    ticker.outbox.send(Out::Requests(stats));
                }
            }
            sweeper.sweep();
        }
    });
    let flusher = access_log.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(l7::access_log::FLUSH_EVERY);
        loop {
            every.tick().await;
            flusher.flush();
        }
    });
    let dispatch = Arc::new(Dispatch { core: core.clone(), outbox, inbound, outbound, tls: tls_state, listeners: Mutex::new(Vec::new()), requests: requests.clone(), access_log });
    // The agent that started this process waits for this line, then connects.
    println!("{}", json!({ "t": "ready", "addr": addr, "control": control_path, "protocol": control::PROTOCOL, "pid": std::process::id() }));

    let (gone_tx, mut gone) = mpsc::unbounded_channel();
    let mut generation = 0u64;
    let mut reader: Option<tokio::task::JoinHandle<()>> = None;
    let mut alone_since = Some(Instant::now());
    let mut check = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            accepted = control.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if !trusted(&stream) {
                    eprintln!("ambit-dataplane: refused a control connection from another user");
                    continue;
                }
                // A new agent replaces the old one: its messages are no longer read.
                if let Some(r) = reader.take() {
                    r.abort();
                }
                generation += 1;
                let (from, to) = stream.into_split();
                core.attach(to, control::PROTOCOL, &addr, dispatch.listeners());
                requests.attached();
                reader = Some(tokio::spawn(read_agent(dispatch.clone(), from, generation, gone_tx.clone())));
                alone_since = None;
            }
            Some(g) = gone.recv() => {
                if g == generation {
                    reader = None;
                    core.detach();
                    alone_since = Some(Instant::now());
                }
            }
            _ = check.tick() => {
                if core.busy() {
                    if alone_since.is_some() {
                        alone_since = Some(Instant::now());
                    }
                } else if alone_since.is_some_and(|since| since.elapsed() >= ORPHAN_AFTER) {
                    let _ = std::fs::remove_file(&control_path);
                    std::process::exit(0);
                }
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, control) = match args.as_slice() {
        [a, listen, b, control] if a == "--listen" && b == "--control" => (listen.clone(), control.clone()),
        // Asked by tests and installs: which control protocol this build speaks.
        [flag] if flag == "--protocol" => {
            println!("{}", control::PROTOCOL);
            return;
        }
        _ => {
            eprintln!("usage: ambit-dataplane --listen HOST:PORT --control PATH | --protocol (started by ambit-agent, never by hand)");
            std::process::exit(2);
        }
    };
    // One thread, like the agent's event loop: the agent and this process
    // share the host's cores with the workloads.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(run(listen, control));
}
