//! Upstream HTTP connections, each carried by one HBONE CONNECT stream to
//! its endpoint (opened on the pooled HBONE connection to the endpoint's
//! agent, outbound.rs). hyper-util's pooled client keeps them: idle HTTP/1.1
//! keep-alive connections are reused, and one HTTP/2 connection per endpoint
//! multiplexes requests. A client (and so a pool) belongs to one source
//! workload and one service: connections are never shared between sources
//! (each CONNECT carries its source's certificate and Forwarded claim) and
//! every one counts against its service's connection cap (circuit.rs).
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;

use crate::control::pb;
use crate::l7::balancer::Services;
use crate::l7::circuit::Slot;
use crate::l7::stream_io::StreamIo;
use crate::outbound::{Outbound, Release};

/// Why no upstream connection could be had.
#[derive(Debug)]
pub enum ConnectError {
    /// The service's cap on connections is reached (response flag UO).
    Overflow,
    /// The endpoint could not be reached (UF): the failure's reason and detail.
    Failed { reason: String, message: String },
    /// The destination agent's policy refused this source (its HBONE 401):
    /// an answer about the client, not the endpoint's health.
    Denied { message: String },
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Overflow => write!(f, "the service's upstream connection limit is reached"),
            ConnectError::Failed { message, .. } | ConnectError::Denied { message } => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Opens upstream connections for one (source, service, endpoint): the
/// endpoint is looked up in the service's current table at each connect.
/// The request URI keeps the app's authority (`Host`, `:authority`), so a
/// client (and its pool) is made per endpoint, and the URI says nothing of where it goes.
#[derive(Clone)]
pub struct Connector {
    /// The endpoint "ip:port" (its CONNECT authority); empty for a connector
    /// that is told its endpoint with each `connect`.
    pub endpoint: String,
    pub outbound: Arc<Outbound>,
    pub services: Arc<Services>,
    pub key: String,
    pub source: String,
    pub headers: Vec<pb::Header>,
    pub timeout: Duration,
}

impl Connector {
    pub async fn connect(&self, authority: &str) -> Result<HboneIo, ConnectError> {
        let failed = |reason: &str, message: String| ConnectError::Failed { reason: reason.into(), message };
        let table = self.services.get(&self.key).ok_or_else(|| failed("no_route", format!("no HTTP service {}", self.key)))?;
        let e = table.endpoints.iter().find(|e| e.info.authority == authority).ok_or_else(|| failed("no_route", format!("{authority} is no endpoint of {}", table.service)))?;
        let slot = table.circuit.connection(self.services.settings().max_connections).ok_or(ConnectError::Overflow)?;
        let attempt = pb::Attempt { hbone: e.info.hbone.clone(), sni: e.info.sni.clone(), expect: e.info.expect.clone(), authority: authority.to_string(), headers: self.headers.clone() };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (release, response, send) = self.outbound.attempt(&self.source, &attempt, deadline).await.map_err(|f| if f.status == 401 { ConnectError::Denied { message: f.message } } else { failed(&f.reason, f.message) })?;
        Ok(HboneIo { io: TokioIo::new(StreamIo::new(send, response.into_body())), _release: release, _slot: slot })
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = HboneIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<HboneIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(&this.endpoint).await })
    }
}

/// An HBONE CONNECT stream (stream_io.rs) as the byte stream hyper reads
/// and writes, holding its pooled connection's stream slot and its
/// service's connection slot until hyper drops it.
pub struct HboneIo {
    io: TokioIo<StreamIo>,
    _release: Release,
    _slot: Slot,
}

impl hyper::rt::Read for HboneIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: hyper::rt::ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for HboneIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connection for HboneIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}
