//! The system calls that move a connection's bytes: `recv`, `send` and
//! `sendmsg`, made directly (rustix) rather than through libc.
//!
//! The server has more than one thread, and in a process with threads
//! glibc's `recv` and `send` are cancellation points: each call switches
//! the thread to asynchronous cancellation and back, two atomic
//! read-modify-writes around the system call. Nothing here is ever
//! cancelled (Rust does not use `pthread_cancel`), and at one request in
//! flight every round trip makes one `recv` and one `send`: `perf record`
//! of the rpc workload put `__pthread_enable_asynccancel` and
//! `__pthread_disable_asynccancel` at ~59 ns per round trip, more than the
//! request's decoding. The echo floor, one thread, never pays it.
//!
//! Each function is one attempt, for tokio's `try_io`: `WouldBlock` comes
//! back as an error like any other.

use std::io::{self, IoSlice};

use rustix::net::{RecvFlags, SendAncillaryBuffer, SendFlags};
use tokio::net::TcpStream;

/// A peer that went away makes the write fail with `EPIPE` instead of
/// raising `SIGPIPE`, whatever the embedding program does with signals.
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: SendFlags = SendFlags::NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: SendFlags = SendFlags::empty();

/// Reads what the socket has into `buffer`; `Ok(0)` at the end of the stream.
pub(super) fn recv(socket: &TcpStream, buffer: &mut [u8]) -> io::Result<usize> {
    let (read, _) = rustix::net::recv(socket, buffer, RecvFlags::empty())?;
    Ok(read)
}

/// Writes what of `bytes` the socket takes.
pub(super) fn send(socket: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(socket, bytes, SEND_FLAGS)?)
}

/// Writes what of `slices`, in order, the socket takes, in one call.
pub(super) fn send_vectored(socket: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    Ok(rustix::net::sendmsg(
        socket,
        slices,
        &mut SendAncillaryBuffer::default(),
        SEND_FLAGS,
    )?)
}
