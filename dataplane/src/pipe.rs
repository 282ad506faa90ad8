//! stdin and stdout, the pipe to the agent, read and written on the runtime's
//! own thread.
//!
//! tokio's `stdin()`/`stdout()` hand every read and write to a blocking
//! thread and back, because a standard stream may be a terminal or a file.
//! Here they are always the ends the agent created (libuv makes a socketpair;
//! the tests spawn the same way), so they can be made non-blocking and
//! polled by the reactor like the TCP sockets: measured on the bench's
//! new-connections load, the thread hand-offs were a fifth of this process's
//! CPU and most of its context switches (bench/README.md, ninth session).
//! Only a socket or a FIFO is switched: O_NONBLOCK belongs to the open file,
//! which a terminal shares with the shell (and stdout may share with
//! stderr), and is never switched back. Anything else (a terminal, a regular
//! file, /dev/null) falls back to tokio's own streams, so the binary still
//! runs by hand.
use std::fs::File;
use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// fd 0 or 1 as a File, never closed: they are the process's.
struct Raw(ManuallyDrop<File>);

impl AsRawFd for Raw {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// One standard stream, owned for the life of the process.
pub struct Std {
    fd: AsyncFd<Raw>,
}

impl Std {
    /// The stream on `fd`, made non-blocking and registered with the reactor;
    /// None when it cannot be polled.
    fn open(fd: RawFd) -> Option<Std> {
        // SAFETY: fd 0 and 1 are open for the whole process and only this
        // module uses them once the runtime runs; ManuallyDrop never closes them.
        let file = Raw(ManuallyDrop::new(unsafe { File::from_raw_fd(fd) }));
        if !socket_or_fifo(fd) || !set_nonblocking(fd) {
            return None;
        }
        // SAFETY: the fd stays open while the AsyncFd lives (Raw never closes
        // it) and nothing else registers it with the reactor.
        match unsafe { AsyncFd::register(file) } {
            Ok(fd) => Some(Std { fd }),
            Err(_) => {
                set_blocking(fd);
                None
            }
        }
    }
}

/// The ends the agent makes: libuv's socketpair, or a pipe.
fn socket_or_fifo(fd: RawFd) -> bool {
    // SAFETY: fstat writes only into the stat buffer it is given.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    let kind = st.st_mode & libc::S_IFMT;
    kind == libc::S_IFSOCK || kind == libc::S_IFIFO
}

fn flags(fd: RawFd) -> Option<i32> {
    // SAFETY: F_GETFL on an fd has no memory effects.
    let f = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    (f >= 0).then_some(f)
}

fn set_nonblocking(fd: RawFd) -> bool {
    // SAFETY: as above, F_SETFL only changes the descriptor's flags.
    flags(fd).map(|f| unsafe { libc::fcntl(fd, libc::F_SETFL, f | libc::O_NONBLOCK) } >= 0).unwrap_or(false)
}

fn set_blocking(fd: RawFd) {
    if let Some(f) = flags(fd) {
        // SAFETY: as above.
        unsafe { libc::fcntl(fd, libc::F_SETFL, f & !libc::O_NONBLOCK) };
    }
}

impl AsyncRead for Std {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|f| (&*f.get_ref().0).read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Std {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|f| (&*f.get_ref().0).write(data)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here: every write went to the fd.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The agent's messages: stdin, polled if it can be.
pub fn reader() -> Pin<Box<dyn AsyncRead + Send>> {
    match Std::open(0) {
        Some(s) => Box::pin(s),
        None => Box::pin(tokio::io::stdin()),
    }
}

/// Where messages to the agent go: stdout, polled if it can be.
pub fn writer() -> Pin<Box<dyn AsyncWrite + Send>> {
    match Std::open(1) {
        Some(s) => Box::pin(s),
        None => Box::pin(tokio::io::stdout()),
    }
}
