//! The original destination of a connection that iptables REDIRECTed to a
//! capture port (:15001, :15006): netfilter keeps it per socket and answers
//! `getsockopt(SO_ORIGINAL_DST)` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6).
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

/// Both options are number 80, at the IP and IPv6 levels
/// (linux/netfilter_ipv4.h, linux/netfilter_ipv6/ip6_tables.h).
const SO_ORIGINAL_DST: libc::c_int = 80;

/// The destination the client dialled before REDIRECT. A connection that was
/// not redirected (someone dialled the capture port itself) gets ENOENT.
pub fn original_dst(socket: &impl AsRawFd, local: SocketAddr) -> io::Result<SocketAddr> {
    // An IPv4 client on a dual-stack socket is tracked as IPv4.
    let v4 = match local.ip() {
        IpAddr::V4(_) => true,
        IpAddr::V6(a) => a.to_ipv4_mapped().is_some(),
    };
    let level = if v4 { libc::SOL_IP } else { libc::SOL_IPV6 };
    // SAFETY: sockaddr_storage is plain data; the kernel writes at most `len` bytes into it.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let rc = unsafe { libc::getsockopt(socket.as_raw_fd(), level, SO_ORIGINAL_DST, &mut storage as *mut _ as *mut libc::c_void, &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe { *(&storage as *const _ as *const libc::sockaddr_in) };
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { *(&storage as *const _ as *const libc::sockaddr_in6) };
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)), u16::from_be(sin6.sin6_port)))
        }
        f => Err(io::Error::new(io::ErrorKind::InvalidData, format!("SO_ORIGINAL_DST answered address family {f}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_was_not_redirected_has_none() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        let err = original_dst(&server, addr).unwrap_err();
        // ENOENT where conntrack is loaded, ENOPROTOOPT where it is not.
        assert!(matches!(err.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOPROTOOPT)), "{err}");
    }
}
