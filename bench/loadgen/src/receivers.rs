//! Receive-only connections read through one epoll set of their own.
//!
//! A fan-out run has 10,000 connections that only receive. Read through
//! tokio, each delivery costs a task wake-up, a poll of the task, a poll of
//! its deadline timer and the socket's readiness bookkeeping: ~20% of the
//! generator's core at 400k deliveries/s, when the kernel's own reading
//! already takes most of the rest. Here the connections are handed over once
//! their set-up is done to one task that registers them in a `mio::Poll` of
//! its own and waits for that poll's epoll descriptor through tokio (epoll
//! sets nest): one wake-up brings a batch of readiness events, and each is
//! just the read and the parse. It stays one runtime thread per process, so
//! the senders' tasks and timers run between batches on the same thread
//! (a second thread on the generator's core made it switch between the two
//! thousands of times a second, at a cost to both cores).

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Events, Poll, Token};
use tokio::io::unix::AsyncFd;
use tokio::time::sleep_until;

use crate::stats::{self, now_us};
use crate::target::{Session, Target, handle_frame};
use crate::work::{Go, at};
use crate::ws::{ReadOutcome, Reader};

/// Readiness events handled per turn before other tasks get the thread.
const BATCH: usize = 256;

struct Receiver {
    stream: TcpStream,
    reader: Reader,
    target: Target,
    replies: Vec<u8>,
    closed: bool,
}

impl Receiver {
    /// Reads what the socket has (or, once, with `held`, parses what set-up
    /// read past the handshake), counting deliveries; answers keep-alives.
    /// Only set-up's bytes need parsing on their own: what a read leaves is
    /// an incomplete frame, which only the next read can complete.
    fn read(&mut self, go: &Go, held: bool) {
        stats::reading(self.stream.as_raw_fd() as u32);
        let target = self.target;
        let replies = &mut self.replies;
        let mut on = |p: &[u8]| {
            stats::scan_deliveries(p, now_us());
        };
        let mut frame = |op, p: &[u8]| handle_frame(target, replies, op, p, &mut on);
        let outcome = if held {
            Ok(if self.reader.process_pending(&mut frame) {
                ReadOutcome::Closed
            } else {
                ReadOutcome::Data
            })
        } else {
            self.reader
                .read_available_fd(self.stream.as_fd(), &mut frame)
        };
        match outcome {
            Ok(ReadOutcome::Data) => {}
            Ok(ReadOutcome::Closed) => self.close(go),
            Err(e) => {
                stats::error(|| format!("read failed: {e}"));
                self.close(go);
            }
        }
        if !self.replies.is_empty() {
            // A keep-alive answer of a few bytes into a socket that never
            // sends anything else: its buffer has room. If it had not, the
            // answer would be lost, so that is counted as an error.
            if let Err(e) = (&self.stream).write_all(&self.replies) {
                stats::error(|| format!("keep-alive answer not written: {e}"));
            }
            self.replies.clear();
        }
    }

    fn close(&mut self, go: &Go) {
        self.closed = true;
        if now_us() < go.end {
            stats::STATS.with(|s| s.borrow_mut().closed_early += 1);
        }
    }
}

/// When to read, for a run that keeps the generator off the server's core
/// time while it writes a publication out (`fanout --read-between`): from
/// `first_us` (wall clock) on, every `every_us`, everything ready is read.
#[derive(Debug, Clone, Copy)]
pub struct ReadSchedule {
    pub first_us: f64,
    pub every_us: f64,
}

/// Takes over `sessions` and reads them until the drain ends, counting
/// into this thread's statistics. Their sockets leave tokio's reactor here.
pub async fn run(sessions: Vec<Session>, go: Go, schedule: Option<ReadSchedule>) -> io::Result<()> {
    let mut receivers = Vec::with_capacity(sessions.len());
    for s in sessions {
        let (stream, reader, target, replies, closed) = s.into_parts();
        receivers.push(Receiver {
            stream: TcpStream::from_std(stream.into_std()?),
            reader,
            target,
            replies,
            closed,
        });
    }
    read_until_drained(receivers, go, schedule).await
}

async fn read_until_drained(
    mut receivers: Vec<Receiver>,
    go: Go,
    schedule: Option<ReadSchedule>,
) -> io::Result<()> {
    let poll = Poll::new()?;
    for (i, r) in receivers.iter_mut().enumerate() {
        // Sockets already readable are reported by the first poll:
        // registering a ready socket queues its event.
        poll.registry()
            .register(&mut r.stream, Token(i), mio::Interest::READABLE)?;
        if r.reader.has_pending() {
            r.read(&go, true);
        }
    }
    if let Some(schedule) = schedule {
        // Not through tokio: its reactor would wake the thread as the set's
        // readiness changes, while the server writes.
        return read_on_schedule(receivers, go, schedule, poll).await;
    }
    // `with_interest` is deprecated because a type could hand tokio a
    // descriptor it later closes or swaps; its replacement is an `unsafe fn`
    // with that as its contract, and this crate forbids unsafe code. A
    // `Poll` owns its epoll descriptor until it is dropped, and it is only
    // dropped with the `AsyncFd`, which is the contract either way.
    #[allow(deprecated)]
    let mut poll = AsyncFd::with_interest(poll, tokio::io::Interest::READABLE)?;
    let mut events = Events::with_capacity(BATCH);
    let deadline = sleep_until(at(go.drain_end));
    tokio::pin!(deadline);
    loop {
        let mut ready = tokio::select! {
            biased;
            () = &mut deadline => return Ok(()),
            ready = poll.readable_mut() => ready?,
        };
        let handled = match read_ready(&mut receivers, &go, ready.get_inner_mut(), &mut events) {
            Ok(handled) => handled,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if handled < BATCH {
            // The set is drained: wait for its next edge.
            ready.clear_ready();
        } else {
            // More may be waiting; let the senders have the thread first.
            drop(ready);
            tokio::task::yield_now().await;
        }
    }
}

/// Reads nothing between the scheduled times; at each, everything ready,
/// batch by batch. The epoll set is polled without waiting, so no read
/// starts before its time because data arrived.
async fn read_on_schedule(
    mut receivers: Vec<Receiver>,
    go: Go,
    schedule: ReadSchedule,
    mut poll: Poll,
) -> io::Result<()> {
    let mut events = Events::with_capacity(BATCH);
    let deadline = sleep_until(at(go.drain_end));
    tokio::pin!(deadline);
    let mut next = schedule.first_us;
    loop {
        tokio::select! {
            biased;
            () = &mut deadline => return Ok(()),
            () = sleep_until(at(next as u64)) => {}
        }
        loop {
            match read_ready(&mut receivers, &go, &mut poll, &mut events) {
                Ok(handled) if handled < BATCH => break,
                Ok(_) => tokio::task::yield_now().await,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let now = now_us() as f64;
        while next <= now {
            next += schedule.every_us;
        }
    }
}

/// Reads the connections of up to one batch of readiness events; returns
/// how many events there were.
fn read_ready(
    receivers: &mut [Receiver],
    go: &Go,
    poll: &mut Poll,
    events: &mut Events,
) -> io::Result<usize> {
    poll.poll(events, Some(Duration::ZERO))?;
    let mut handled = 0;
    for event in events.iter() {
        handled += 1;
        let Some(r) = receivers.get_mut(event.token().0) else {
            continue;
        };
        if !r.closed {
            r.read(go, false);
            if r.closed {
                let _ = poll.registry().deregister(&mut r.stream);
            }
        }
    }
    Ok(handled)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream as StdStream};

    use nix::sys::socket::{setsockopt, sockopt};

    use super::*;

    /// An unmasked server frame.
    fn server_frame(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x81, payload.len() as u8];
        frame.extend_from_slice(payload);
        frame
    }

    fn delivery() -> Vec<u8> {
        server_frame(format!(r#"{{"type":"e","t":{}}}"#, now_us()).as_bytes())
    }

    /// Runs the receive loop on a thread of its own, as a generator process
    /// does, and returns what it counted.
    fn read_on_a_thread(
        receivers: Vec<Receiver>,
        go: Go,
        schedule: Option<ReadSchedule>,
    ) -> std::thread::JoinHandle<io::Result<stats::Stats>> {
        std::thread::spawn(move || {
            // The generator's process sets its window before the run starts.
            stats::set_window(go.start, go.end);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(read_until_drained(receivers, go, schedule))?;
            Ok(stats::STATS.with(|s| std::mem::take(&mut *s.borrow_mut())))
        })
    }

    /// A PubSub receiver on one end of a loopback connection, and the other end.
    fn pair() -> (Receiver, StdStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = StdStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.set_nonblocking(true).unwrap();
        setsockopt(&client, sockopt::ReceiveTimestampns, &true).unwrap();
        let receiver = Receiver {
            stream: TcpStream::from_std(client),
            reader: Reader::with_leftover(Vec::new(), true),
            target: Target::Pubsub,
            replies: Vec::new(),
            closed: false,
        };
        (receiver, server)
    }

    /// A window starting now, ending after `end_ms`, drained until `drain_ms`.
    fn window_from_now(end_ms: u64, drain_ms: u64) -> Go {
        let now = now_us();
        Go {
            go_at: now,
            start: now,
            end: now + end_ms * 1_000,
            drain_end: now + drain_ms * 1_000,
            split: u64::MAX,
        }
    }

    #[test]
    fn every_connection_is_read_timed_and_answered_until_the_drain_ends() {
        let _on = crate::ws::stamps_on();
        let go = window_from_now(300, 500);
        let (mut receivers, mut peers): (Vec<_>, Vec<_>) = (0..3).map(|_| pair()).unzip();
        // One connection holds a delivery and half of the next from its
        // set-up; one delivery waits in each socket before the loop starts.
        let mut held = delivery();
        let next = delivery();
        held.extend_from_slice(&next[..5]);
        receivers[0].reader = Reader::with_leftover(held, true);
        peers[0].write_all(&next[5..]).unwrap();
        for p in &mut peers[1..] {
            p.write_all(&delivery()).unwrap();
        }
        let thread = read_on_a_thread(receivers, go, None);
        std::thread::sleep(Duration::from_millis(50));
        // While it runs: a keep-alive to answer, more deliveries, a close.
        peers[0]
            .write_all(&server_frame(br#"{"kind":"ping"}"#))
            .unwrap();
        peers[1].write_all(&delivery()).unwrap();
        drop(peers.pop());
        let mut pong = [0u8; 21];
        peers[0]
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        peers[0].read_exact(&mut pong).unwrap();
        assert_eq!(&pong, b"\x81\x8f\0\0\0\0{\"kind\":\"pong\"}");

        let counted = thread.join().unwrap().unwrap();
        assert_eq!(counted.errors, 0, "{:?}", counted.first_error);
        assert_eq!(counted.received, 5, "2 + 2 + 1 deliveries");
        assert_eq!(counted.hist.len(), 5);
        assert_eq!(
            counted.arrival_hist.len(),
            4,
            "all but the one held from set-up"
        );
        assert!(counted.arrival_hist.max() <= counted.hist.max());
        assert_eq!(counted.closed_early, 1);
        assert!(now_us() >= go.drain_end, "read until the drain ended");
    }

    #[test]
    fn on_a_schedule_nothing_is_read_between_the_scheduled_times() {
        let _on = crate::ws::stamps_on();
        let go = window_from_now(500, 600);
        // One read, 200 ms from now; the next would be long after the drain.
        let schedule = ReadSchedule {
            first_us: (go.start + 200_000) as f64,
            every_us: 10e6,
        };
        let (receivers, mut peers): (Vec<_>, Vec<_>) = (0..3).map(|_| pair()).unzip();
        for p in &mut peers {
            p.write_all(&delivery()).unwrap();
        }
        let thread = read_on_a_thread(receivers, go, Some(schedule));
        // After the one read: nobody reads this.
        std::thread::sleep(Duration::from_millis(350));
        peers[0].write_all(&delivery()).unwrap();

        let counted = thread.join().unwrap().unwrap();
        assert_eq!(counted.errors, 0, "{:?}", counted.first_error);
        assert_eq!(counted.received, 3, "what was there at the scheduled read");
        assert!(
            counted.hist.min() >= 190_000,
            "read at the scheduled time, not before: {} µs",
            counted.hist.min()
        );
        assert!(
            counted.arrival_hist.max() < 100_000,
            "timed to arrival: {} µs",
            counted.arrival_hist.max()
        );
    }
}
