//! L7: per-request handling on service ports that declare an HTTP protocol
//! (docs/l7.md). `outcome` is what every finished request is reported as,
//! to the observers (metrics, access log, spans) the core holds;
//! `server_side` serves the destination side of such a port, authorizing
//! each request (`authz`).
pub mod authz;
mod counted;
pub mod outcome;
pub mod server_side;
pub mod stream_io;
