//! `host-probe`: how fast this host's kernel is at what the benchmarks spend
//! most of their time on, as one JSON line for bench/run to record with every
//! result.
//!
//! Sessions land on different hosts, and the kernel's share of a round trip or
//! a delivery is 70–90% (docs/benchmarks.md, "Where the time goes"), so the
//! absolute figures follow the host more than the server. Two gauges that
//! involve no server:
//!
//! - `null_syscall_ns`: one `getppid`, entry and return only. This is what
//!   speculative-execution mitigations (retpolines, "Safe RET") make dearer.
//! - `loopback_write_us`: a 20-byte `write` to one of `PAIRS` loopback TCP
//!   connections in turn, the shape of a fan-out sweep: on loopback the
//!   sender's core also runs the receiving side's TCP. No one waits on the
//!   receiving ends, so no wake-up is included: a floor under what one
//!   delivery costs the server.
//!
//! Each gauge is the median of several rounds, so a moment of noise from a
//! neighbour on the host does not decide it. Run it pinned to the core the
//! server would use (bench/run does).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Instant;

const SYSCALLS_PER_ROUND: u32 = 200_000;
const PAIRS: usize = 2_000;
const ROUNDS: usize = 15;
const MESSAGE: [u8; 20] = *b"host-probe 20 bytes.";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn null_syscall_ns() -> f64 {
    let rounds = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            let mut sum = 0u64;
            for _ in 0..SYSCALLS_PER_ROUND {
                sum = sum.wrapping_add(u64::from(std::os::unix::process::parent_id()));
            }
            std::hint::black_box(sum);
            t.elapsed().as_nanos() as f64 / f64::from(SYSCALLS_PER_ROUND)
        })
        .collect();
    median(rounds)
}

/// Connected loopback pairs: (writing end, reading end).
fn pairs(n: usize) -> io::Result<Vec<(TcpStream, TcpStream)>> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    (0..n)
        .map(|_| {
            let writer = TcpStream::connect(addr)?;
            let (reader, _) = listener.accept()?;
            writer.set_nodelay(true)?;
            reader.set_nonblocking(true)?;
            Ok((writer, reader))
        })
        .collect()
}

fn drain(reader: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
    loop {
        match reader.read(buf) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn loopback_write_us() -> io::Result<f64> {
    let mut pairs = pairs(PAIRS)?;
    let mut buf = [0u8; 4096];
    let mut rounds = Vec::with_capacity(ROUNDS);
    // The first round warms the connections' buffers and is not counted.
    for round in 0..=ROUNDS {
        let t = Instant::now();
        for (writer, _) in &mut pairs {
            writer.write_all(&MESSAGE)?;
        }
        let elapsed = t.elapsed();
        // Read back so no connection's receive queue grows over the rounds.
        for (_, reader) in &mut pairs {
            drain(reader, &mut buf)?;
        }
        if round > 0 {
            rounds.push(elapsed.as_secs_f64() * 1e6 / PAIRS as f64);
        }
    }
    Ok(median(rounds))
}

fn main() -> io::Result<()> {
    let syscall = null_syscall_ns();
    let write = loopback_write_us()?;
    println!(
        "{{\"null_syscall_ns\":{syscall:.0},\"loopback_write_us\":{write:.2},\"loopback_pairs\":{PAIRS}}}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_write_reaches_its_reader() -> io::Result<()> {
        let mut pairs = pairs(3)?;
        let mut buf = [0u8; 64];
        for (writer, reader) in &mut pairs {
            writer.write_all(&MESSAGE)?;
            // Loopback delivers within the write; allow a moment all the same.
            let mut got = 0;
            for _ in 0..100 {
                match reader.read(&mut buf[got..]) {
                    Ok(n) => got += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if got >= MESSAGE.len() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(&buf[..got], &MESSAGE);
        }
        Ok(())
    }

    #[test]
    fn the_median_is_the_middle_round() {
        assert_eq!(median(vec![9.0, 1.0, 5.0]), 5.0);
    }
}
