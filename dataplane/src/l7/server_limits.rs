//! The limits of every HTTP server the data plane runs on a connection it
//! did not open (the destination side of an HBONE stream or captured
//! plaintext, and the source side of an app's connection): whatever a peer
//! or an app sends, one connection can cost only so much, and breaking a
//! limit ends that connection with the protocol's answer (docs/l7.md, "Bad
//! input").
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

/// Concurrent requests a client may have on one HTTP/2 connection: more are
/// refused (REFUSED_STREAM) until some finish. Envoy's default is larger
/// (2^31), but each stream here holds an upstream request; 256 is what a
/// gRPC client multiplexes at most by default (grpc-go: 100, grpc-js: no cap
/// but one connection per channel).
pub const MAX_STREAMS: u32 = 256;
/// One request head's decoded header list (HTTP/2), at most: Envoy's default
/// max_request_headers_kb is 60 KiB. Beyond it the stream is refused.
pub const MAX_HEADER_LIST: u32 = 64 * 1024;
/// An HTTP/1.1 request head (request line and headers), at most: beyond it
/// the answer is 431. hyper's buffer limit, the same bound as HTTP/2's.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers in one HTTP/1.1 request, at most (hyper's default; Envoy's is 100 too): beyond it, 431.
pub const MAX_HEADERS: usize = 100;
/// How long an HTTP/1.1 client has to send a whole request head once it
/// started one: a slowloris holds no connection longer (hyper's default is 30 s).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams a client opened and reset before they were served, at most,
/// before the connection ends with GOAWAY ENHANCE_YOUR_CALM: the rapid
/// reset attack (CVE-2023-44487). h2's default.
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams we reset because the client broke the protocol on them, at most,
/// before the connection ends (the "MadeYouReset" variant, CVE-2025-8671). h2's default.
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Bytes buffered per stream toward a slow client, at most (h2's default).
pub const MAX_SEND_BUF: usize = 400 * 1024;

/// An HTTP server with these limits: HTTP/1.1 or HTTP/2 with prior
/// knowledge, told apart by the first bytes; or HTTP/2 only.
pub fn builder(h2_only: bool) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .max_send_buf_size(MAX_SEND_BUF);
    if h2_only {
        b = b.http2_only();
    }
    b
}

