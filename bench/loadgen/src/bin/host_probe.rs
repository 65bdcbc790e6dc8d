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
//! - `sweep_write_us`: the same write, one round to each of `SWEEP_PAIRS`
//!   connections, while a thread on `--reader-core` (the generator's core)
//!   waits on their reading ends in epoll and drains them, as the load
//!   generator does. On loopback each write then also runs the receiving
//!   socket's epoll callback while the reader works on the same sockets from
//!   the other core; that, not waking the reader nor the number of sockets,
//!   is what more than doubled a write's cost where it was measured
//!   (docs/benchmarks.md, *Machine*). `sweep_10k_ms` is the time one core
//!   takes to write once to 10,000 such members: no server that writes to
//!   each member separately from one core has a fan-out p99 below it.
//!
//! - `away_ms_per_s`, `away_longest_ms`: how steady the two cores are. A
//!   thread on each (this process's core and `--reader-core`) reads the
//!   clock for `WATCH` without ever waiting; a gap over `AWAY_GAP` between
//!   two readings is time its core gave to something else (another
//!   process, a kernel thread, the hypervisor). The p99 of a closed loop
//!   follows these dips more than its mean (docs/benchmarks.md, *rpc*).
//!
//! Each gauge but the last is the median of several rounds, so a moment of
//! noise from a neighbour on the host does not decide it; the last is that
//! noise. Run it pinned to the core the server would use (bench/run does).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use mio::{Events, Interest, Poll, Token};

const SYSCALLS_PER_ROUND: u32 = 200_000;
const PAIRS: usize = 2_000;
const ROUNDS: usize = 15;
const MESSAGE: [u8; 20] = *b"host-probe 20 bytes.";
/// Two open files each: 18,000 of the ~20,000 one process may hold here.
const SWEEP_PAIRS: usize = 9_000;
const SWEEP_ROUNDS: usize = 9;
/// Between rounds, long enough for the reader to fall asleep in epoll, as it
/// does between publications at a low rate.
const SWEEP_PAUSE: Duration = Duration::from_millis(20);

/// How long the steadiness gauge watches the cores.
const WATCH: Duration = Duration::from_secs(2);
/// A longer gap between two readings of the clock is time the core spent
/// elsewhere: an interrupt takes microseconds, another task or the
/// hypervisor far longer.
const AWAY_GAP: Duration = Duration::from_micros(100);

#[derive(Parser)]
#[command(about = "How fast this host's kernel is at what the benchmarks spend their time on")]
struct Cli {
    /// The core for the thread that reads the sweep's connections (the
    /// generator's); without it the thread may run anywhere this process may.
    #[arg(long)]
    reader_core: Option<usize>,
}

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

/// Reads a non-blocking socket until it has nothing more; returns the bytes read.
fn drain(mut reader: impl Read, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0;
    loop {
        match reader.read(buf) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(total),
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
            drain(&mut *reader, &mut buf)?;
        }
        if round > 0 {
            rounds.push(elapsed.as_secs_f64() * 1e6 / PAIRS as f64);
        }
    }
    Ok(median(rounds))
}

fn pin_this_thread(core: usize) -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core).map_err(io::Error::from)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// Reads every reading end as it becomes readable until `stop`, counting
/// the bytes into `read`.
fn sweep_reader(
    readers: Vec<TcpStream>,
    core: Option<usize>,
    read: &AtomicU64,
    stop: &AtomicBool,
) -> io::Result<()> {
    if let Some(core) = core {
        pin_this_thread(core)?;
    }
    let mut poll = Poll::new()?;
    let mut streams = readers
        .into_iter()
        .map(mio::net::TcpStream::from_std)
        .collect::<Vec<_>>();
    for (i, stream) in streams.iter_mut().enumerate() {
        poll.registry()
            .register(stream, Token(i), Interest::READABLE)?;
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for event in &events {
            let n = drain(&mut streams[event.token().0], &mut buf)?;
            read.fetch_add(n, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn sweep_write_us(reader_core: Option<usize>) -> io::Result<f64> {
    let (mut writers, readers): (Vec<_>, Vec<_>) = pairs(SWEEP_PAIRS)?.into_iter().unzip();
    let read = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (read, stop) = (read.clone(), stop.clone());
        std::thread::spawn(move || sweep_reader(readers, reader_core, &read, &stop))
    };
    let per_round = (SWEEP_PAIRS * MESSAGE.len()) as u64;
    let mut rounds = Vec::with_capacity(SWEEP_ROUNDS);
    let result = (|| {
        // The first round warms the connections and is not counted.
        for round in 0..=SWEEP_ROUNDS {
            let t = Instant::now();
            for writer in &mut writers {
                writer.write_all(&MESSAGE)?;
            }
            let elapsed = t.elapsed();
            let deadline = Instant::now() + Duration::from_secs(10);
            while read.load(Ordering::Relaxed) < per_round * (round as u64 + 1) {
                if Instant::now() > deadline || reader.is_finished() {
                    return Err(io::Error::other(
                        "the sweep's reader fell behind or stopped",
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if round > 0 {
                rounds.push(elapsed.as_secs_f64() * 1e6 / SWEEP_PAIRS as f64);
            }
            std::thread::sleep(SWEEP_PAUSE);
        }
        Ok(median(rounds))
    })();
    stop.store(true, Ordering::Relaxed);
    let joined = reader
        .join()
        .map_err(|_| io::Error::other("the sweep's reader panicked"))?;
    let per_write = result?;
    joined?;
    Ok(per_write)
}

/// The gaps a spinning thread saw between its readings of the clock.
struct Away {
    started: Instant,
    last: Instant,
    total: Duration,
    longest: Duration,
}

impl Away {
    fn new(now: Instant) -> Self {
        Away {
            started: now,
            last: now,
            total: Duration::ZERO,
            longest: Duration::ZERO,
        }
    }

    fn tick(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.last);
        if gap > AWAY_GAP {
            self.total += gap;
            self.longest = self.longest.max(gap);
        }
        self.last = now;
    }

    fn ms_per_s(&self) -> f64 {
        let watched = self
            .last
            .saturating_duration_since(self.started)
            .as_secs_f64();
        if watched == 0.0 {
            return 0.0;
        }
        self.total.as_secs_f64() * 1e3 / watched
    }
}

/// Spins on the calling thread for `WATCH`, reading the clock.
fn watch_this_core() -> Away {
    let mut away = Away::new(Instant::now());
    loop {
        let now = Instant::now();
        away.tick(now);
        if now.saturating_duration_since(away.started) >= WATCH {
            return away;
        }
    }
}

/// [`watch_this_core`] on this thread's core and, at the same time, on
/// `other_core`.
fn away(other_core: Option<usize>) -> io::Result<(Away, Away)> {
    let other = std::thread::spawn(move || -> io::Result<Away> {
        if let Some(core) = other_core {
            pin_this_thread(core)?;
        }
        Ok(watch_this_core())
    });
    let here = watch_this_core();
    let there = other
        .join()
        .map_err(|_| io::Error::other("the steadiness gauge's thread panicked"))??;
    Ok((here, there))
}

fn main() -> io::Result<()> {
    let cli = Cli::parse();
    let syscall = null_syscall_ns();
    let write = loopback_write_us()?;
    let sweep = sweep_write_us(cli.reader_core)?;
    let sweep_10k_ms = sweep * 10_000.0 / 1_000.0;
    let (here, there) = away(cli.reader_core)?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{{\"null_syscall_ns\":{syscall:.0},\"loopback_write_us\":{write:.2},\"loopback_pairs\":{PAIRS},\
         \"sweep_write_us\":{sweep:.2},\"sweep_pairs\":{SWEEP_PAIRS},\"sweep_10k_ms\":{sweep_10k_ms:.1},\
         \"away_ms_per_s\":[{:.2},{:.2}],\"away_longest_ms\":[{:.2},{:.2}]}}",
        here.ms_per_s(),
        there.ms_per_s(),
        ms(here.longest),
        ms(there.longest),
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
    fn a_sweep_reader_reads_what_is_written() -> io::Result<()> {
        let (mut writers, readers): (Vec<_>, Vec<_>) = pairs(4)?.into_iter().unzip();
        let read = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (read, stop) = (read.clone(), stop.clone());
            std::thread::spawn(move || sweep_reader(readers, None, &read, &stop))
        };
        for writer in &mut writers {
            writer.write_all(&MESSAGE)?;
        }
        let want = (4 * MESSAGE.len()) as u64;
        for _ in 0..500 {
            if read.load(Ordering::Relaxed) >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().expect("the reader ran")?;
        assert_eq!(read.load(Ordering::Relaxed), want);
        Ok(())
    }

    #[test]
    fn only_gaps_longer_than_an_interrupt_count_as_time_away() {
        let t0 = Instant::now();
        let mut away = Away::new(t0);
        away.tick(t0 + Duration::from_micros(20));
        away.tick(t0 + Duration::from_micros(2_020));
        away.tick(t0 + Duration::from_micros(2_070));
        away.tick(t0 + Duration::from_micros(2_570));
        away.tick(t0 + Duration::from_millis(1_000));
        // 2 ms, 0.5 ms and 997.43 ms away; the 20 and 50 µs steps are not.
        assert_eq!(away.longest, Duration::from_micros(997_430));
        assert_eq!(away.total, Duration::from_micros(999_930));
        assert!((away.ms_per_s() - 999.93).abs() < 1e-6);
    }

    #[test]
    fn the_median_is_the_middle_round() {
        assert_eq!(median(vec![9.0, 1.0, 5.0]), 5.0);
    }
}
