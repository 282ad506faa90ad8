//! SOCKS5 (RFC 1928) with username/password authentication (RFC 1929), the
//! explicit outbound entry point on :15080. The username names the source
//! workload (`namespace/name`); this module only reads what the client says,
//! and the agent decides whether the connection proves that workload
//! (docs/architecture.md, "Source proof"). Only CONNECT is served.
//!
//! The negotiation reads exactly the bytes each step declares, never more,
//! so whatever the client sends after its request stays in the socket for
//! the relay: no byte is read ahead and lost.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const VERSION: u8 = 0x05;
const AUTH_VERSION: u8 = 0x01;
const METHOD_USERPASS: u8 = 0x02;
const METHOD_REFUSED: u8 = 0xff;
const CMD_CONNECT: u8 = 0x01;
const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// Reply codes (RFC 1928 §6).
pub mod reply {
    pub const SUCCEEDED: u8 = 0;
    pub const GENERAL_FAILURE: u8 = 1;
    pub const NOT_ALLOWED: u8 = 2;
    pub const HOST_UNREACHABLE: u8 = 4;
    pub const CONNECTION_REFUSED: u8 = 5;
    pub const TTL_EXPIRED: u8 = 6;
    pub const COMMAND_NOT_SUPPORTED: u8 = 7;
    pub const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 8;
}

/// A client's CONNECT request, after authentication.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub user: String,
    pub host: String,
    pub port: u16,
}

/// Why the negotiation ended without a request: what to say to the client
/// (if anything; the client may be gone) and a message for the agent's log.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub response: Option<Vec<u8>>,
    pub message: String,
}

impl Refusal {
    fn new(response: Option<Vec<u8>>, message: impl Into<String>) -> Self {
        Refusal { response, message: message.into() }
    }
}

/// The reply to a request: `code`, with an unspecified bound address (the
/// mesh, not this host, holds the connection's far end).
pub fn reply_bytes(code: u8) -> [u8; 10] {
    [VERSION, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0]
}

/// Negotiates up to the request within `timeout`. On a refusal the response
/// (if any) is written before returning, so the caller only closes.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, timeout: Duration) -> Result<Request, Refusal> {
    let negotiated = match tokio::time::timeout(timeout, negotiate(s)).await {
        Ok(r) => r,
        Err(_) => Err(Refusal::new(None, format!("SOCKS5 negotiation timed out after {} ms", timeout.as_millis()))),
    };
    if let Err(Refusal { response: Some(bytes), .. }) = &negotiated {
        let _ = s.write_all(bytes).await;
        let _ = s.flush().await;
    }
    negotiated
}

fn gone(e: std::io::Error) -> Refusal {
    Refusal::new(None, format!("client went away during SOCKS5 negotiation: {e}"))
}

async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<Request, Refusal> {
    // Greeting: VER NMETHODS METHODS...
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.map_err(gone)?;
    if head[0] != VERSION {
        return Err(Refusal::new(None, format!("unsupported SOCKS version {}", head[0])));
    }
    let mut methods = vec![0u8; head[1] as usize];
    s.read_exact(&mut methods).await.map_err(gone)?;
    if !methods.contains(&METHOD_USERPASS) {
        // The username is how a client names its workload: no other method is served.
        return Err(Refusal::new(Some(vec![VERSION, METHOD_REFUSED]), "client does not offer username/password authentication"));
    }
    s.write_all(&[VERSION, METHOD_USERPASS]).await.map_err(gone)?;

    // Authentication: VER ULEN UNAME PLEN PASSWD. The password is not used.
    s.read_exact(&mut head).await.map_err(gone)?;
    if head[0] != AUTH_VERSION {
        return Err(Refusal::new(Some(vec![AUTH_VERSION, 1]), format!("unsupported authentication version {}", head[0])));
    }
    let mut user = vec![0u8; head[1] as usize];
    s.read_exact(&mut user).await.map_err(gone)?;
    let mut plen = [0u8; 1];
    s.read_exact(&mut plen).await.map_err(gone)?;
    let mut password = vec![0u8; plen[0] as usize];
    s.read_exact(&mut password).await.map_err(gone)?;
    let Ok(user) = String::from_utf8(user) else {
        return Err(Refusal::new(Some(vec![AUTH_VERSION, 1]), "username is not UTF-8"));
    };
    // Any well-formed username is accepted here: whether the client is that
    // workload is the agent's decision, answered in the request's reply.
    s.write_all(&[AUTH_VERSION, 0]).await.map_err(gone)?;

    // Request: VER CMD RSV ATYP DST.ADDR DST.PORT
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await.map_err(gone)?;
    let fail = |code: u8, message: String| Err(Refusal::new(Some(reply_bytes(code).to_vec()), message));
    if req[0] != VERSION {
        return fail(reply::GENERAL_FAILURE, format!("unsupported SOCKS version {} in request", req[0]));
    }
    if req[1] != CMD_CONNECT {
        return fail(reply::COMMAND_NOT_SUPPORTED, format!("unsupported SOCKS command {}", req[1]));
    }
    if req[2] != 0 {
        return fail(reply::GENERAL_FAILURE, "reserved byte in request is not zero".into());
    }
    let host = match req[3] {
        ATYP_IPV4 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).await.map_err(gone)?;
            IpAddr::V4(Ipv4Addr::from(a)).to_string()
        }
        ATYP_IPV6 => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a).await.map_err(gone)?;
            IpAddr::V6(Ipv6Addr::from(a)).to_string()
        }
        ATYP_DOMAIN => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await.map_err(gone)?;
            let mut name = vec![0u8; len[0] as usize];
            s.read_exact(&mut name).await.map_err(gone)?;
            if name.is_empty() || !name.iter().all(|b| *b > 0x20 && *b < 0x7f) {
                return fail(reply::GENERAL_FAILURE, "malformed domain name in request".into());
            }
            // Printable ASCII checked above.
            String::from_utf8(name).unwrap_or_default()
        }
        other => return fail(reply::ADDRESS_TYPE_NOT_SUPPORTED, format!("unsupported address type {other}")),
    };
    let mut port = [0u8; 2];
    s.read_exact(&mut port).await.map_err(gone)?;
    Ok(Request { user, host, port: u16::from_be_bytes(port) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn greeting_and_auth(user: &str) -> Vec<u8> {
        let mut b = vec![VERSION, 2, 0x00, METHOD_USERPASS, AUTH_VERSION, user.len() as u8];
        b.extend_from_slice(user.as_bytes());
        b.extend_from_slice(&[1, b'x']);
        b
    }

    /// Negotiates `input` (then the client's end of input) and returns what the server said back.
    async fn run(input: Vec<u8>) -> (Result<Request, Refusal>, Vec<u8>) {
        let (mut client, mut server) = duplex(4096);
        client.write_all(&input).await.unwrap();
        client.shutdown().await.unwrap();
        let result = accept(&mut server, Duration::from_millis(200)).await;
        drop(server);
        let mut said = Vec::new();
        client.read_to_end(&mut said).await.unwrap();
        (result, said)
    }

    #[tokio::test]
    async fn domain_request_with_trailing_bytes_left_unread() {
        let mut input = greeting_and_auth("shop/client");
        input.extend_from_slice(&[VERSION, CMD_CONNECT, 0, ATYP_DOMAIN, 8]);
        input.extend_from_slice(b"web.shop");
        input.extend_from_slice(&80u16.to_be_bytes());
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (mut client, mut server) = duplex(4096);
        client.write_all(&input).await.unwrap();
        let req = accept(&mut server, Duration::from_millis(200)).await.unwrap();
        assert_eq!(req, Request { user: "shop/client".into(), host: "web.shop".into(), port: 80 });
        let mut rest = [0u8; 16];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET / HTTP/1.1\r\n");
        let mut said = [0u8; 4];
        client.read_exact(&mut said).await.unwrap();
        assert_eq!(said, [VERSION, METHOD_USERPASS, AUTH_VERSION, 0]);
    }

    #[tokio::test]
    async fn ipv4_and_ipv6_requests() {
        let mut input = greeting_and_auth("a/b");
        input.extend_from_slice(&[VERSION, CMD_CONNECT, 0, ATYP_IPV4, 10, 0, 0, 7, 0x1f, 0x90]);
        let (r, _) = run(input).await;
        assert_eq!(r.unwrap(), Request { user: "a/b".into(), host: "10.0.0.7".into(), port: 8080 });
        let mut input = greeting_and_auth("a/b");
        input.extend_from_slice(&[VERSION, CMD_CONNECT, 0, ATYP_IPV6]);
        input.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        input.extend_from_slice(&443u16.to_be_bytes());
        let (r, _) = run(input).await;
        assert_eq!(r.unwrap(), Request { user: "a/b".into(), host: "fd00::1".into(), port: 443 });
    }

    #[tokio::test]
    async fn no_userpass_method_is_refused_with_ff() {
        let (r, said) = run(vec![VERSION, 1, 0x00]).await;
        assert!(r.unwrap_err().message.contains("username/password"));
        assert_eq!(said, vec![VERSION, METHOD_REFUSED]);
    }

    #[tokio::test]
    async fn bind_command_gets_command_not_supported() {
        let mut input = greeting_and_auth("a/b");
        input.extend_from_slice(&[VERSION, 0x02, 0, ATYP_IPV4, 1, 2, 3, 4, 0, 80]);
        let (r, said) = run(input).await;
        assert!(r.is_err());
        assert_eq!(&said[4..], &reply_bytes(reply::COMMAND_NOT_SUPPORTED));
    }

    #[tokio::test]
    async fn unknown_address_type_and_bad_domain() {
        let mut input = greeting_and_auth("a/b");
        input.extend_from_slice(&[VERSION, CMD_CONNECT, 0, 9]);
        let (_, said) = run(input).await;
        assert_eq!(&said[4..], &reply_bytes(reply::ADDRESS_TYPE_NOT_SUPPORTED));
        let mut input = greeting_and_auth("a/b");
        input.extend_from_slice(&[VERSION, CMD_CONNECT, 0, ATYP_DOMAIN, 3, b'a', b' ', b'b', 0, 80]);
        let (r, said) = run(input).await;
        assert!(r.unwrap_err().message.contains("domain"));
        assert_eq!(&said[4..], &reply_bytes(reply::GENERAL_FAILURE));
    }

    #[tokio::test]
    async fn wrong_version_and_truncation_and_silence() {
        let (r, said) = run(vec![4, 1, 0]).await;
        assert!(r.unwrap_err().message.contains("version 4"));
        assert!(said.is_empty());
        // A greeting cut short: the client's end of input, not a hang.
        let (r, said) = run(vec![VERSION, 3, METHOD_USERPASS]).await;
        assert!(r.unwrap_err().message.contains("went away"));
        assert!(said.is_empty());
        // A client that says nothing is cut at the deadline.
        let (_client, mut server) = duplex(64);
        let r = accept(&mut server, Duration::from_millis(50)).await;
        assert!(r.unwrap_err().message.contains("timed out"));
    }
}
