//! The link to the agent: newline-delimited JSON, one message per line, both
//! ways over the Unix socket the agent connects to (main.rs). The agent is
//! the only party that decides anything: it names the identities to serve,
//! verifies every peer's identity, and rules on every connection. This
//! process only moves bytes and reports what happened (docs/dataplane.md).
use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

/// The version of these messages, stated in the first message (`hello`):
/// the agent refuses an executable whose version is not its own
/// (agent/proxy/native-inbound.ts, DATAPLANE_PROTOCOL). Bump both with any
/// change to the messages.
pub const PROTOCOL: u32 = 4;

/// What the agent sends.
#[derive(Deserialize, Debug)]
#[serde(tag = "t")]
pub enum In {
    /// The complete TLS state: the trust bundle and every local identity's
    /// certificate chain and key. Answered with `ack` or `nack`.
    #[serde(rename = "config")]
    Config { rev: u64, bundle: String, identities: Vec<IdentityIn> },
    /// The verdict on a TLS session's peer (see Out `session`).
    #[serde(rename = "session")]
    Session { sid: u64, ok: bool },
    /// The verdict on a CONNECT: 200 with where to dial, or a refusal status.
    #[serde(rename = "decide")]
    Decide {
        id: u64,
        status: u16,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        dial: String,
        #[serde(default, rename = "timeoutMs")]
        timeout_ms: u64,
        /// What the agent says of the connection, given back to a later agent (core.rs).
        #[serde(default)]
        tag: String,
    },
    /// Close a live connection (policy now denies it, or the drain deadline passed).
    #[serde(rename = "close")]
    Close { id: u64 },
    /// Serve a listener for the agent: answered with `bound` (or `error`
    /// naming `lid`). `kind` says what the client tells on it: `upstream`
    /// (nothing: the listener names source and destination), `socks5` (a
    /// SOCKS5 negotiation: user and destination), `capture` (redirected by
    /// iptables: the original destination), each announced with `out` and
    /// waiting for its `route`; or `plaintext` (inbound plaintext capture,
    /// :15006), announced with `plain` and waiting for a `decide`.
    #[serde(rename = "listen")]
    Listen { lid: u64, addr: String, #[serde(default)] kind: String },
    /// Where an outbound connection goes: `tunnel` (HBONE CONNECT, presenting
    /// `source`'s certificate, to each of `attempts` in turn until one opens:
    /// see outbound.rs `tunnel`; each failed attempt is reported with
    /// `attempt`), `direct` (dial `dial`: a destination outside the mesh), or
    /// `refuse` (reset the client).
    #[serde(rename = "route")]
    Route(RouteIn),
    /// The verdict on an outbound HBONE connection's server (see Out `peer`).
    #[serde(rename = "peer")]
    Peer { pid: u64, ok: bool },
    /// Exit once what is queued is written: the agent stops for good (after its drain).
    #[serde(rename = "exit")]
    Exit,
    /// Stop accepting; GOAWAY each session once its streams are over and written;
    /// say `drained` when no session is left (closed, and read until its peer closed).
    #[serde(rename = "drain")]
    Drain,
}

/// Decodes one line from the agent: the one entry point of the pipe's
/// reading side, which the fuzz target control_decode (dataplane/fuzz/)
/// drives, so a change of codec changes only this function and that target.
pub fn decode(line: &str) -> Result<In, serde_json::Error> {
    serde_json::from_str(line)
}

#[derive(Deserialize, Debug)]
pub struct RouteIn {
    pub id: u64,
    pub verdict: String,
    #[serde(default)]
    pub dial: String,
    #[serde(default)]
    pub source: String,
    /// Tunnel: the endpoints to try, in order (the agent's choice first, then
    /// other endpoints of the same service); at most outbound::MAX_ATTEMPTS are tried.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// The whole opening's deadline (every attempt within it).
    #[serde(default, rename = "timeoutMs")]
    pub timeout_ms: u64,
    /// SOCKS5 only: the reply code (RFC 1928) of a refusal.
    #[serde(default)]
    pub reply: u8,
    /// What the agent says of the connection, given back to a later agent (core.rs).
    #[serde(default)]
    pub tag: String,
}

/// One endpoint a tunnel may open to: CONNECT `authority` through the agent
/// at `hbone` (TLS server name `sni`), whose certificate must be `expect`.
#[derive(Deserialize, Debug)]
pub struct Attempt {
    pub hbone: String,
    pub sni: String,
    pub expect: String,
    pub authority: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

#[derive(Deserialize, Debug)]
pub struct IdentityIn {
    /// The identity's SPIFFE URI: outbound, the source whose certificate the client presents.
    #[serde(default)]
    pub uri: String,
    /// The TLS server name clients use to ask for this identity (serverNameFor in hbone-server.ts).
    pub sni: String,
    pub chain: String,
    pub key: String,
}

/// What the writer task takes: a line to write, an agent's connection to
/// write to from now on (with what it must read first), the end of that
/// connection, or a request to say when everything queued before is written.
pub enum Queued {
    Line(Value),
    Attach(OwnedWriteHalf, Vec<Value>),
    Detach,
    Written(oneshot::Sender<()>),
}

/// The writer's end: messages are queued and written by one task, many per
/// write when they come faster than the agent takes them. With no agent
/// attached they are dropped: what a later agent needs is kept by core.rs.
#[derive(Clone)]
pub struct Outbox(mpsc::UnboundedSender<Queued>);

impl Outbox {
    pub fn send(&self, v: Value) {
        // The writer task lives as long as the process.
        let _ = self.0.send(Queued::Line(v));
    }

    /// Writes go to `to` from now on, `first` before anything queued after this.
    pub fn attach(&self, to: OwnedWriteHalf, first: Vec<Value>) {
        let _ = self.0.send(Queued::Attach(to, first));
    }

    pub fn detach(&self) {
        let _ = self.0.send(Queued::Detach);
    }

    /// Resolves once every message sent before is written (or dropped).
    pub async fn written(&self) {
        let (tx, rx) = oneshot::channel();
        if self.0.send(Queued::Written(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

pub fn outbox() -> (Outbox, mpsc::UnboundedReceiver<Queued>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Outbox(tx), rx)
}

/// Writes queued messages to the attached agent's connection until the queue closes.
pub async fn write_loop(mut rx: mpsc::UnboundedReceiver<Queued>) {
    let mut out: Option<OwnedWriteHalf> = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut waiting = Vec::new();
    while let Some(first) = rx.recv().await {
        buf.clear();
        let mut next = Some(first);
        while let Some(q) = next.take() {
            match q {
                Queued::Line(v) if out.is_some() => push_line(&mut buf, &v),
                Queued::Line(_) => {}
                Queued::Attach(to, lines) => {
                    // What was queued for the previous agent goes nowhere now.
                    buf.clear();
                    out = Some(to);
                    for v in &lines {
                        push_line(&mut buf, v);
                    }
                }
                Queued::Detach => {
                    buf.clear();
                    out = None;
                }
                Queued::Written(tx) => waiting.push(tx),
            }
            if buf.len() < 64 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if let Some(w) = out.as_mut() {
            if !buf.is_empty() && w.write_all(&buf).await.is_err() {
                // The agent is gone; its reader sees the end and detaches.
                out = None;
            }
        }
        for tx in waiting.drain(..) {
            let _ = tx.send(());
        }
    }
}

fn push_line(buf: &mut Vec<u8>, v: &Value) {
    // Serializing a Value cannot fail.
    serde_json::to_writer(&mut *buf, v).expect("JSON");
    buf.push(b'\n');
}
