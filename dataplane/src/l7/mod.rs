//! L7: per-request handling on service ports that declare an HTTP protocol
//! (docs/l7.md). `outcome` is what every finished request is reported as,
//! to the observers (metrics, access log, spans) the core holds;
//! `server_side` serves the destination side of such a port, authorizing
//! each request (`authz`); `metrics` aggregates Istio's request metrics for
//! the agent, `access_log` writes a line per request.
pub mod access_log;
pub mod authz;
pub mod body;
mod counted;
pub mod metrics;
pub mod outcome;
pub mod server_limits;
pub mod server_side;
pub mod stream_io;
