//! Reading from a connection's socket without a per-connection read buffer:
//! bytes land in a per-thread scratch buffer and are parsed at once, each
//! message handed on borrowed from there; only an incomplete frame is kept
//! by the connection's parser.

use std::cell::RefCell;
use std::io;

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::socket_calls;
use super::wire::{Incoming, Message, Parser, WireError};

/// Bytes read per system call at most.
const SCRATCH_BYTES: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice());
}

pub(crate) enum Read {
    /// Bytes were read (and parsed into the output).
    Data,
    /// Nothing to read after all (a spurious wake-up).
    Nothing,
    /// The client closed its side of the connection.
    Eof,
}

#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Wire(WireError),
}

/// Reads what the socket has (one system call) and parses it into `out`,
/// as owned messages. Call after `readable()` resolved.
pub(crate) fn read(
    socket: &TcpStream,
    parser: &mut Parser,
    max_message: usize,
    out: &mut Vec<Incoming>,
) -> Result<Read, ReadError> {
    read_in_place(socket, parser, max_message, |message, _| {
        out.push(message.to_incoming());
    })
}

/// Reads what the socket has (one system call) and hands each message to
/// `on_message` borrowed from the read buffer, with whether more bytes
/// follow it in this read. Call after the socket was found readable.
pub(crate) fn read_in_place(
    socket: &TcpStream,
    parser: &mut Parser,
    max_message: usize,
    mut on_message: impl FnMut(Message<'_>, bool),
) -> Result<Read, ReadError> {
    SCRATCH.with(|scratch| {
        // `on_message` runs while the buffer is lent out; should anything
        // it calls read a socket on this thread, that read gets a buffer
        // of its own rather than a borrow panic.
        let mut own = Vec::new();
        let mut lent = scratch.try_borrow_mut();
        let buffer: &mut [u8] = match &mut lent {
            Ok(scratch) => scratch,
            Err(_) => {
                own.resize(SCRATCH_BYTES, 0);
                &mut own
            }
        };
        let mut got = 0usize;
        // A short read means the kernel had nothing more: report WouldBlock to
        // try_io so tokio clears the readiness now, instead of costing a second
        // read system call that would only say so. The system call itself,
        // not `try_read`, which would run a second `try_io` of its own
        // inside this one.
        let result = socket.try_io(Interest::READABLE, || {
            let n = socket_calls::recv(socket, buffer)?;
            got = n;
            if n > 0 && n < buffer.len() {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) if got == 0 => return Ok(Read::Eof),
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if got == 0 {
                    return Ok(Read::Nothing);
                }
            }
            Err(e) => return Err(ReadError::Io(e)),
        }
        parser
            .feed_in_place(&mut buffer[..got], max_message, &mut on_message)
            .map_err(ReadError::Wire)?;
        Ok(Read::Data)
    })
}
