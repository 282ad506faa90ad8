//! ambit-dataplane: the agent's native HBONE data path
//! (docs/native-dataplane.md): inbound HBONE, and outbound on the upstream
//! listeners the agent hands it. Started by `ambit-agent` (its native data
//! path, the default where this executable is installed), never by hand:
//!
//!   ambit-dataplane --listen HOST:PORT
//!
//! It binds HOST:PORT, says `{"t":"listening","addr":…,"protocol":N}` on stdout, and then
//! takes the agent's messages on stdin (control.rs). It exits when stdin
//! closes: the agent that started it is gone, and nothing may serve without it.
mod control;
mod core;
mod hbone_head;
mod inbound;
mod linger;
mod original_dst;
mod outbound;
mod pipe;
mod relay;
mod socks5;
mod tls;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

use control::In;
use inbound::{Decision, Inbound};
use outbound::{Entry, Outbound};

/// How often live tunnels' byte counts go to the agent.
const BYTES_EVERY: Duration = Duration::from_millis(1000);

fn fail(outbox_line: serde_json::Value) -> ! {
    println!("{outbox_line}");
    std::process::exit(2);
}

async fn run(listen: String) {
    let listener = match TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => fail(json!({ "t": "error", "code": "AMBIT_ERR_INTERNAL", "message": format!("cannot listen on {listen}: {e}") })),
    };
    let (outbox, queue) = control::outbox();
    tokio::spawn(control::write_loop(queue));
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    outbox.send(json!({ "t": "listening", "addr": addr, "protocol": control::PROTOCOL }));
    let core = core::Core::new(outbox.clone());
    let tls_state = Arc::new(RwLock::new(None));
    let inbound = Inbound::new(core.clone(), tls_state.clone());
    let outbound = Outbound::new(core.clone(), tls_state.clone());
    tokio::spawn(inbound.clone().serve(listener));
    let (ticker, sweeper) = (core.clone(), outbound.clone());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(BYTES_EVERY);
        loop {
            every.tick().await;
            ticker.report_bytes();
            sweeper.sweep();
        }
    });

    let mut lines = BufReader::new(pipe::reader()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match control::decode(&line) {
            Ok(In::Config { rev, bundle, identities }) => match tls::config(&bundle, &identities, &outbox) {
                Ok(config) => {
                    *tls_state.write().unwrap() = Some(Arc::new(config));
                    outbox.send(json!({ "t": "ack", "rev": rev }));
                }
                Err(message) => outbox.send(json!({ "t": "nack", "rev": rev, "message": message })),
            },
            Ok(In::Session { sid, ok }) => inbound.session_verdict(sid, ok),
            Ok(In::Decide { id, status, reason, dial, timeout_ms }) => inbound.decide(id, Decision { status, reason, dial, timeout_ms }),
            Ok(In::Close { id }) => core.close(id),
            Ok(In::Listen { lid, addr, kind }) => match kind.as_str() {
                "plaintext" => {
                    tokio::spawn(inbound.clone().listen_plaintext(lid, addr));
                }
                "" | "upstream" => {
                    tokio::spawn(outbound.clone().listen(lid, addr, Entry::Upstream));
                }
                "socks5" => {
                    tokio::spawn(outbound.clone().listen(lid, addr, Entry::Socks5));
                }
                "capture" => {
                    tokio::spawn(outbound.clone().listen(lid, addr, Entry::Capture));
                }
                other => outbox.send(json!({ "t": "error", "lid": lid, "code": "AMBIT_ERR_INTERNAL", "message": format!("unknown listener kind {other:?}") })),
            },
            Ok(In::Route(route)) => outbound.route(route),
            Ok(In::Peer { pid, ok }) => outbound.peer_verdict(pid, ok),
            Ok(In::Drain) => {
                outbound.drain();
                core.drain();
            }
            Err(e) => outbox.send(json!({ "t": "error", "code": "AMBIT_ERR_INTERNAL", "message": format!("unreadable control message: {e}") })),
        }
    }
    // stdin closed: the agent is gone. What was already said is written
    // first (answers to the last messages; by hand, the whole exchange).
    let _ = tokio::time::timeout(Duration::from_secs(1), outbox.written()).await;
    std::process::exit(0);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = match args.as_slice() {
        [flag, addr] if flag == "--listen" => addr.clone(),
        // Asked by the agent before it chooses this data path (--dataplane auto).
        [flag] if flag == "--protocol" => {
            println!("{}", control::PROTOCOL);
            return;
        }
        _ => {
            eprintln!("usage: ambit-dataplane --listen HOST:PORT | --protocol (started by ambit-agent, never by hand)");
            std::process::exit(2);
        }
    };
    // One thread, like the agent's event loop: the agent and this process
    // share the host's cores with the workloads.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(run(listen));
}
