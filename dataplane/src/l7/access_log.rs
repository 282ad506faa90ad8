//! One access-log line per finished HTTP request, written by the data plane
//! itself to its stderr (the agent's: the journal under systemd, the
//! container's log on Kubernetes) in the agent's JSON format, so nothing
//! per request crosses to the agent.
//!
//! The data plane runs on one thread, so a slow log reader must never block
//! it: lines collect in a buffer written without blocking (Sink), in
//! batches of whole lines of at most PIPE_BUF bytes — a pipe write that size
//! is atomic, so lines never interleave with the agent's own — when a batch
//! fills and every FLUSH_EVERY. What the reader does not take waits, up to
//! PENDING_MAX; past that, lines are dropped and a line says how many.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::l7::outcome::{Protocol, RequestObserver, RequestOutcome, Side};

/// Pipe writes up to this many bytes are atomic (POSIX PIPE_BUF on Linux).
const BATCH: usize = 4096;
/// Lines waiting for a slow reader, at most: a few seconds of a busy agent.
const PENDING_MAX: usize = 4 << 20;
/// Longest path and authority logged: a line stays within one atomic write.
const MAX_FIELD: usize = 1024;
/// How often lines short of a batch are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Where lines go, written without blocking. Standard error is shared with
/// the agent (the same open file), so its flags are never changed: a pipe
/// is opened again (its own non-blocking open file), a socket is written
/// with MSG_DONTWAIT, and anything else (a file, a terminal) does not hold
/// a writer back and is written plainly.
pub enum Sink {
    Pipe(OwnedFd),
    Socket(RawFd),
    Plain(RawFd),
    #[cfg(test)]
    Memory(std::sync::Arc<Mutex<Vec<u8>>>),
}

impl Sink {
    pub fn stderr() -> Sink {
        let fd = std::io::stderr().as_raw_fd();
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Sink::Plain(fd);
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFSOCK => Sink::Socket(fd),
            libc::S_IFIFO => {
                let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
                let own = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC) };
                if own < 0 { Sink::Plain(fd) } else { Sink::Pipe(unsafe { OwnedFd::from_raw_fd(own) }) }
            }
            _ => Sink::Plain(fd),
        }
    }

    /// Writes what it can of `b` now: the bytes written (0 when the reader is behind).
    fn write(&mut self, b: &[u8]) -> usize {
        let n = match self {
            Sink::Pipe(fd) => unsafe { libc::write(fd.as_raw_fd(), b.as_ptr().cast(), b.len()) },
            Sink::Socket(fd) => unsafe { libc::send(*fd, b.as_ptr().cast(), b.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) },
            Sink::Plain(fd) => unsafe { libc::write(*fd, b.as_ptr().cast(), b.len()) },
            #[cfg(test)]
            Sink::Memory(m) => {
                m.lock().unwrap().extend_from_slice(b);
                b.len() as isize
            }
        };
        usize::try_from(n).unwrap_or(0)
    }
}

struct Pending {
    sink: Sink,
    /// Whole lines not yet written (a partly written line's rest first).
    buf: Vec<u8>,
    dropped: u64,
}

pub struct AccessLog {
    on: AtomicBool,
    pending: Mutex<Pending>,
    pid: u32,
}

impl AccessLog {
    /// Logging stays off until `enable`; `flush` must be called every FLUSH_EVERY.
    pub fn new(sink: Sink) -> Self {
        AccessLog { on: AtomicBool::new(false), pending: Mutex::new(Pending { sink, buf: Vec::new(), dropped: 0 }), pid: std::process::id() }
    }

    /// Whether a line is written per request (RequestTelemetry.access_log: the agent's access log level).
    pub fn enable(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    /// Writes what the reader takes now, in batches of whole lines of at most BATCH bytes.
    pub fn flush(&self) {
        let mut guard = self.pending.lock().unwrap();
        let p = &mut *guard;
        if p.dropped > 0 && p.buf.len() + 256 <= PENDING_MAX {
            let note = format!("{{\"level\":\"warn\",\"time\":\"{}\",\"pid\":{},\"name\":\"ambit-agent\",\"msg\":\"{} access log lines dropped: stderr was not read fast enough\"}}\n", iso_time(SystemTime::now()), self.pid, p.dropped);
            p.buf.extend_from_slice(note.as_bytes());
            p.dropped = 0;
        }
        let mut done = 0;
        while done < p.buf.len() {
            let rest = &p.buf[done..];
            // Whole lines up to BATCH bytes (a longer line alone).
            let mut end = rest.len().min(BATCH);
            if end < rest.len() {
                end = rest[..end].iter().rposition(|b| *b == b'\n').map(|i| i + 1).unwrap_or_else(|| rest.iter().position(|b| *b == b'\n').map_or(rest.len(), |i| i + 1));
            }
            let n = p.sink.write(&rest[..end]);
            done += n;
            if n < end {
                break;
            }
        }
        p.buf.drain(..done);
    }

    fn push(&self, line: &str) {
        let full = {
            let mut p = self.pending.lock().unwrap();
            if p.buf.len() + line.len() > PENDING_MAX {
                p.dropped += 1;
                return;
            }
            p.buf.extend_from_slice(line.as_bytes());
            p.buf.len() >= BATCH
        };
        if full {
            self.flush();
        }
    }
}

impl RequestObserver for AccessLog {
    fn observe(&self, o: &RequestOutcome) {
        if self.on.load(Ordering::Relaxed) {
            self.push(&line(o, self.pid, SystemTime::now()));
        }
    }
}

/// The line of one request, in the agent's access-log format (JSON, the
/// connection line's field names where they mean the same).
pub fn line(o: &RequestOutcome, pid: u32, now: SystemTime) -> String {
    // The request's trace as its span has it (a trace started here for a
    // request that came without one included), else the header's.
    let hop_trace = o.trace.map(|h| h.trace_id_hex());
    let trace_id = hop_trace.as_deref().or_else(|| o.traceparent.as_deref().and_then(|t| t.split('-').nth(1)).filter(|t| t.len() == 32)).unwrap_or("");
    let mut v = serde_json::Map::new();
    let mut put = |k: &str, val: serde_json::Value| {
        v.insert(k.into(), val);
    };
    put("level", "info".into());
    put("time", iso_time(now).into());
    put("pid", pid.into());
    put("name", "ambit-agent".into());
    put("log", "access".into());
    put("direction", if o.side == Side::Destination { "inbound" } else { "outbound" }.into());
    put("protocol", match o.protocol {
        Protocol::Http1 => "HTTP/1.1",
        Protocol::Http2 => "HTTP/2",
        Protocol::Grpc => "gRPC",
    }.into());
    put("method", o.method.clone().into());
    put("authority", clip(&o.authority).into());
    put("path", clip(&o.path).into());
    put("status", o.status.into());
    put("grpc_status", o.grpc_status.map(|g| g.to_string()).unwrap_or_default().into());
    put("response_flags", if o.response_flags.is_empty() { "-".to_string() } else { o.response_flags.clone() }.into());
    put("duration_ms", ((o.duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0).into());
    put("upstream", o.upstream.clone().into());
    put("bytes_recv", o.request_bytes.into());
    put("bytes_sent", o.response_bytes.into());
    put("src.workload", o.source.workload.clone().into());
    put("src.namespace", o.source.namespace.clone().into());
    put("src.identity", o.source.identity.clone().into());
    put("dst.workload", o.destination.workload.clone().into());
    put("dst.namespace", o.destination.namespace.clone().into());
    put("dst.identity", o.destination.identity.clone().into());
    put("dst.service", o.service.clone().into());
    put("trace_id", trace_id.into());
    put("route", o.route.clone().into());
    put("attempts", o.attempts.into());
    put("msg", "request".into());
    let mut s = serde_json::Value::Object(v).to_string();
    s.push('\n');
    s
}

fn clip(s: &str) -> &str {
    if s.len() <= MAX_FIELD {
        return s;
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// RFC 3339 UTC with milliseconds, as the agent's logger writes `time`.
pub fn iso_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::outcome::Peer;
    use std::sync::Mutex;
    use std::time::Duration;

    fn outcome() -> RequestOutcome {
        RequestOutcome {
            side: Side::Source, protocol: Protocol::Http2, method: "POST".into(), authority: "web.shop".into(), path: "/a?b=\"c\"".into(), status: 201,
            grpc_status: None, response_flags: String::new(), start: SystemTime::now(), duration: Duration::from_micros(2500),
            request_bytes: 12, response_bytes: 34, upstream: "10.0.0.2:8080".into(), service: "web.shop.svc.cluster.local".into(),
            source: Peer { identity: "spiffe://cluster.local/ns/shop/sa/client".into(), workload: "client".into(), namespace: "shop".into() },
            destination: Peer { identity: "spiffe://cluster.local/ns/shop/sa/web".into(), workload: "web".into(), namespace: "shop".into() },
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            trace: None,
            route: "HTTPRoute/shop/web#0".into(),
            attempts: 3,
        }
    }

    #[test]
    fn a_line_has_every_field_in_the_agents_format() {
        let l = line(&outcome(), 42, UNIX_EPOCH + Duration::from_millis(1_765_112_096_123));
        assert!(l.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["time"], "2025-12-07T12:54:56.123Z");
        assert_eq!((v["level"].as_str(), v["log"].as_str(), v["msg"].as_str(), v["pid"].as_u64()), (Some("info"), Some("access"), Some("request"), Some(42)));
        assert_eq!((v["method"].as_str(), v["authority"].as_str(), v["path"].as_str(), v["status"].as_u64()), (Some("POST"), Some("web.shop"), Some("/a?b=\"c\""), Some(201)));
        assert_eq!((v["duration_ms"].as_f64(), v["bytes_recv"].as_u64(), v["bytes_sent"].as_u64()), (Some(2.5), Some(12), Some(34)));
        assert_eq!((v["upstream"].as_str(), v["dst.service"].as_str(), v["direction"].as_str()), (Some("10.0.0.2:8080"), Some("web.shop.svc.cluster.local"), Some("outbound")));
        assert_eq!((v["response_flags"].as_str(), v["protocol"].as_str()), (Some("-"), Some("HTTP/2")));
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["src.identity"], "spiffe://cluster.local/ns/shop/sa/client");
        assert_eq!((v["route"].as_str(), v["attempts"].as_u64()), (Some("HTTPRoute/shop/web#0"), Some(3)));
    }

    #[test]
    fn the_trace_id_is_the_hops_when_there_is_one() {
        let mut o = outcome();
        o.traceparent = None;
        o.trace = Some(crate::spans::Spans::default().hop(None));
        let want = o.trace.unwrap().trace_id_hex();
        let v: serde_json::Value = serde_json::from_str(&line(&o, 1, SystemTime::now())).unwrap();
        assert_eq!(v["trace_id"], want.as_str(), "a trace started at this hop");
    }

    #[test]
    fn long_fields_are_clipped_and_a_bad_traceparent_gives_no_trace_id() {
        let mut o = outcome();
        o.path = format!("/{}", "é".repeat(2000));
        o.traceparent = Some("garbage".into());
        let v: serde_json::Value = serde_json::from_str(&line(&o, 1, SystemTime::now())).unwrap();
        assert!(v["path"].as_str().unwrap().len() <= MAX_FIELD);
        assert_eq!(v["trace_id"], "");
    }

    #[test]
    fn one_line_per_request_once_enabled_in_whole_line_batches() {
        let mem = std::sync::Arc::new(Mutex::new(Vec::new()));
        let log = AccessLog::new(Sink::Memory(mem.clone()));
        log.observe(&outcome());
        log.enable(true);
        for _ in 0..30 {
            log.observe(&outcome());
        }
        log.flush();
        let text = String::from_utf8(mem.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 30, "none before enable, one per request after");
        assert!(text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    }

    #[test]
    fn a_reader_that_takes_nothing_holds_lines_back_then_drops_them_and_says_so() {
        let (r, w) = {
            let mut fds = [0; 2];
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) }, 0);
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        };
        let log = AccessLog::new(Sink::Pipe(w));
        log.enable(true);
        let one = line(&outcome(), 1, SystemTime::now()).len();
        let n = PENDING_MAX / one + 100;
        for _ in 0..n {
            log.observe(&outcome()); // never blocks: the pipe fills, the rest waits, then is dropped
        }
        let mut read = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            log.flush();
            let got = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if got <= 0 {
                break;
            }
            read.extend_from_slice(&buf[..got as usize]);
        }
        let text = String::from_utf8(read).unwrap();
        assert!(text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "only whole lines");
        let note = text.lines().last().unwrap();
        assert!(note.contains("access log lines dropped"), "{note}");
        assert!(text.lines().count() < n);
    }
}
