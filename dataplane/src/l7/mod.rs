//! L7: per-request handling on service ports that declare an HTTP protocol
//! (docs/l7.md). The source side (client_side.rs) serves the app's HTTP,
//! balances each request over its service's endpoint table (balancer.rs)
//! with passive health (health.rs) and circuit breaking (circuit.rs), and
//! sends it on pooled upstream connections carried by HBONE streams
//! (upstream.rs). `server_side` serves the destination side of such a port,
//! authorizing each request (`authz`). `outcome` is what every finished
//! request is reported as, to the observers the core holds; `metrics`
//! aggregates Istio's request metrics for the agent, `access_log` writes a
//! line per request. `routes` holds the route tables (Gateway API routes)
//! that decide requests on the source side, `filters` and `fault` are their
//! rules' filters, `retry` their retry budget and backoff, `request_body`
//! the buffering that lets a request be retried or mirrored.
pub mod access_log;
pub mod authz;
pub mod balancer;
pub mod body;
pub mod circuit;
pub mod client_side;
mod counted;
pub mod deadline;
pub mod fault;
pub mod filters;
pub mod health;
pub mod metrics;
pub mod outcome;
pub mod request_body;
pub mod retry;
pub mod routes;
pub mod server_limits;
pub mod server_side;
pub mod stream_io;
pub mod upstream;
