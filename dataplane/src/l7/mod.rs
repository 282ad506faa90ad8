//! L7: per-request handling on service ports that declare an HTTP protocol
//! (docs/l7.md). `outcome` is what every finished request is reported as,
//! to the observers (metrics, access log, spans) the core holds.
pub mod outcome;
