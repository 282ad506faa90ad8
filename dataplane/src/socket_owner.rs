//! Who owns a local client's socket: the kernel's answer for exactly that
//! socket (sock_diag, `inet_diag` by its four-tuple), one request and one
//! reply over netlink. The agent proves a VM workload by the uid that owns
//! the client socket (docs/architecture.md, "Source proof"); asking the
//! kernel for the one socket costs microseconds, where parsing
//! /proc/net/tcp costs a pass over every socket on the host.
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

/// The uid owning the TCP socket whose local end is `client` and whose peer
/// is `server` (the client's own view: for a redirected connection, the
/// original destination). None when there is no such socket here (a client
/// on another host, or one already gone) or the kernel cannot be asked.
pub fn owner_uid(client: SocketAddr, server: SocketAddr) -> Option<u32> {
    let (client, server) = (canonical(client), canonical(server));
    let family = match (client.ip(), server.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => AF_INET,
        (IpAddr::V6(_), IpAddr::V6(_)) => AF_INET6,
        _ => return None,
    };
    let mut header = NetlinkHeader::default();
    // Not a dump: the kernel looks up exactly this socket.
    header.flags = NLM_F_REQUEST;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: SocketId {
                source_port: client.port(),
                destination_port: server.port(),
                source_address: client.ip(),
                destination_address: server.ip(),
                interface_id: 0,
                // INET_DIAG_NOCOOKIE: any socket with this four-tuple.
                cookie: [0xff; 8],
            },
        })
        .into(),
    );
    request.finalize();
    let mut out = vec![0; request.buffer_len()];
    request.serialize(&mut out);

    let mut socket = Socket::new(NETLINK_SOCK_DIAG).ok()?;
    socket.bind_auto().ok()?;
    socket.connect(&NetlinkAddr::new(0, 0)).ok()?;
    socket.send(&out, 0).ok()?;
    let mut buf = vec![0; 8192];
    let n = socket.recv(&mut &mut buf[..], 0).ok()?;
    let reply = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[..n]).ok()?;
    match reply.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => Some(r.header.uid),
        _ => None,
    }
}

/// An IPv4 client on a dual-stack socket is an IPv4 socket to the kernel.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_of_a_local_client_socket_is_this_process_user() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(server).unwrap();
        let (_accepted, seen) = listener.accept().unwrap();
        assert_eq!(seen, client.local_addr().unwrap());
        assert_eq!(owner_uid(seen, server), Some(unsafe { libc::geteuid() }));
    }

    #[test]
    fn no_socket_no_owner() {
        let server: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(owner_uid("127.0.0.1:1".parse().unwrap(), server), None);
        assert_eq!(owner_uid("127.0.0.1:1".parse().unwrap(), "[::1]:9".parse().unwrap()), None);
    }
}
