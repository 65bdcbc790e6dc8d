//! Reading from a connection's socket without a per-connection read buffer:
//! bytes land in a per-thread scratch buffer and are parsed at once; only an
//! incomplete frame is kept by the connection's parser.

use std::cell::RefCell;
use std::io::{self, Read as _};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::wire::{Incoming, Parser, WireError};

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

/// Reads what the socket has (one system call) and parses it into `out`.
/// Call after `readable()` resolved.
pub(crate) fn read(
    socket: &TcpStream,
    parser: &mut Parser,
    max_message: usize,
    out: &mut Vec<Incoming>,
) -> Result<Read, ReadError> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut got = 0usize;
        // A short read means the kernel had nothing more: report WouldBlock to
        // try_io so tokio clears the readiness now, instead of costing a second
        // read system call that would only say so.
        // Read through a plain socket reference inside tokio's `try_io`:
        // `try_read` would run a second `try_io` of its own inside this one.
        let plain = socket2::SockRef::from(socket);
        let result = socket.try_io(Interest::READABLE, || {
            let n = (&*plain).read(&mut scratch)?;
            got = n;
            if n > 0 && n < scratch.len() {
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
            .feed(&scratch[..got], max_message, out)
            .map_err(ReadError::Wire)?;
        Ok(Read::Data)
    })
}
