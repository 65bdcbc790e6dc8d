//! One generator process: a current-thread runtime, one task per connection.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::LocalSet;
use tokio::time::{Instant, sleep_until};

use crate::stats::{self, now_us, proc_cpu_s};
use crate::target::{SOCKUDO_PING, Session, Setup, Target, endpoint};
use crate::ws::Template;
use crate::{Common, Workload};

#[derive(Clone, Copy, Debug)]
pub struct Go {
    pub go_at: u64,
    pub start: u64,
    pub end: u64,
    pub drain_end: u64,
    pub split: u64,
}

/// The tokio instant for a wall-clock time in µs.
pub(crate) fn at(us: u64) -> Instant {
    let now = now_us();
    if us > now {
        Instant::now() + Duration::from_micros(us - now)
    } else {
        Instant::now()
    }
}

struct Ctl {
    ready: Cell<usize>,
    failed: Cell<usize>,
    notify: Notify,
    sem: Semaphore,
    go: watch::Receiver<Option<Go>>,
    extra: RefCell<serde_json::Map<String, serde_json::Value>>,
    /// Time deliveries to their kernel receive time too (see ws.rs).
    arrival_stamps: bool,
    /// Receive-only connections, set up and waiting to be handed to
    /// `receivers::run` once the run starts.
    receivers: RefCell<Vec<Session>>,
}

impl Ctl {
    async fn go(&self) -> Go {
        let mut rx = self.go.clone();
        let g = rx
            .wait_for(|g| g.is_some())
            .await
            .map(|g| *g)
            .ok()
            .flatten();
        g.unwrap_or(Go {
            go_at: 0,
            start: 0,
            end: 0,
            drain_end: 0,
            split: u64::MAX,
        })
    }

    /// Opens a connection under the handshake concurrency limit and counts it.
    async fn open(
        &self,
        c: &Common,
        proc_index: usize,
        index: usize,
        setup: &Setup,
        rcvbuf: Option<u32>,
    ) -> Option<Session> {
        let permit = self.sem.acquire().await.ok();
        let mut ep = endpoint(c.target, c.port, c.hosts, proc_index, index, &setup.user);
        ep.recv_buffer = rcvbuf;
        ep.arrival_stamps = self.arrival_stamps;
        let t0 = now_us();
        let r = Session::open(
            c.target,
            &ep,
            setup,
            Duration::from_secs_f64(c.setup_timeout),
        )
        .await;
        drop(permit);
        let out = match r {
            Ok(s) => {
                stats::record_connect(now_us() - t0);
                self.ready.set(self.ready.get() + 1);
                Some(s)
            }
            Err(e) => {
                stats::connect_failed(format!("{} {}: {e}", c.target.name(), ep.path));
                self.failed.set(self.failed.get() + 1);
                None
            }
        };
        self.notify.notify_one();
        out
    }
}

fn split_range(total: usize, index: usize, procs: usize) -> std::ops::Range<usize> {
    let lo = total * index / procs;
    let hi = total * (index + 1) / procs;
    lo..hi
}

pub fn child_main(w: Workload, index: usize, procs: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = LocalSet::new();
    let result = local.block_on(&rt, run_child(w, index, procs));
    if let Err(e) = &result {
        println!("FAIL {e:#}");
        let _ = std::io::stdout().flush();
    }
    // Exit without dropping thousands of sockets one by one.
    std::process::exit(if result.is_ok() { 0 } else { 1 });
}

async fn run_child(w: Workload, index: usize, procs: usize) -> anyhow::Result<()> {
    let c = w.common().clone();
    let (go_tx, go_rx) = watch::channel(None);
    let ctl = Rc::new(Ctl {
        ready: Cell::new(0),
        failed: Cell::new(0),
        notify: Notify::new(),
        sem: Semaphore::new(c.connect_concurrency.max(1)),
        go: go_rx,
        extra: RefCell::new(Default::default()),
        // The open-loop delivery workloads, where the generator reads
        // thousands of sockets and its own delay is part of what it reports.
        arrival_stamps: matches!(
            w,
            Workload::Fanout { .. } | Workload::Dm { .. } | Workload::SlowConsumer { .. }
        ),
        receivers: RefCell::new(Vec::new()),
    });
    let tag = |i: usize| format!("g{index}c{i}");
    let mut n_setup = 0usize;
    let range = split_range(w.main_population(), index, procs);

    match &w {
        Workload::Rpc {
            conns: _,
            inflight,
            rate,
            rpc_kind,
            ..
        } => {
            let total = w.main_population();
            // Pusher has no request/response with a payload (pusher:ping's
            // pusher:pong carries none), and a client event never goes back
            // to its sender. So sockudo's rpc pairs connections 2k and 2k+1
            // on the private channel private-rpc-k: each client event one
            // sends is relayed by the server to the other, whose closed loop
            // answers it with its own. One counted "round trip" is then one
            // pass client -> server -> client, as an echo's is, timed from
            // the sender's stamp to the pair's receipt.
            // `--rpc-kind ping` instead: pusher:ping answered by the server's
            // pusher:pong, its bare request/response without any routing
            // (closed loop only: the answer carries no timestamp).
            let ping = c.target == Target::Sockudo && rpc_kind == "ping";
            anyhow::ensure!(
                !ping || *rate <= 0.0,
                "sockudo --rpc-kind ping is closed loop only (no --rate)"
            );
            anyhow::ensure!(
                c.target != Target::Sockudo || ping || total.is_multiple_of(2),
                "sockudo rpc pairs connections: --conns must be even"
            );
            for i in range {
                n_setup += 1;
                let (ctl, c, inflight, rate) = (ctl.clone(), c.clone(), *inflight, *rate);
                let mut setup = Setup {
                    user: format!("r{i}"),
                    ..Setup::default()
                };
                if c.target == Target::Nats {
                    setup.rpc_subject = Some(format!("e.{}", tag(i)));
                    setup.echo = true;
                }
                let pair_channel = format!("private-rpc-{}", i / 2);
                if c.target == Target::Sockudo && !ping {
                    setup.topic = Some(pair_channel.clone());
                }
                let mut tpl = if ping {
                    Template::new(SOCKUDO_PING)
                } else if rpc_kind == "self-send" && c.target == Target::Pubsub {
                    Template::new(&format!(
                        r#"{{"kind":"sendToUser","id":"{}-{{SEQ}}","to":"r{i}","action":{{"type":"e","t":{{TS}}}}}}"#,
                        tag(i)
                    ))
                } else {
                    c.target.rpc_template(&tag(i), &pair_channel)
                };
                tokio::task::spawn_local(async move {
                    let Some(s) = ctl.open(&c, index, i, &setup, None).await else {
                        return;
                    };
                    let go = ctl.go().await;
                    if rate > 0.0 {
                        let period = 1e6 * total as f64 / rate;
                        let phase = fastrand::f64() * period;
                        let mut seq = 0;
                        open_loop(s, go, period, phase, &mut |buf, ts| {
                            buf.extend_from_slice(tpl.stamp(ts, seq));
                            seq += 1;
                            1
                        })
                        .await;
                    } else {
                        tpl.prev_gap = inflight.max(1) as u64;
                        rpc_closed(s, &mut tpl, go, inflight, ping).await;
                    }
                });
            }
        }
        Workload::Idle { tabs, .. } => {
            for i in range {
                n_setup += 1;
                let (ctl, c) = (ctl.clone(), c.clone());
                let setup = Setup {
                    user: format!("u{}", i / tabs.max(&1)),
                    ..Setup::default()
                };
                tokio::task::spawn_local(async move {
                    let Some(s) = ctl.open(&c, index, i, &setup, None).await else {
                        return;
                    };
                    let go = ctl.go().await;
                    receive_until(s, go, None).await;
                });
            }
        }
        Workload::Fanout { .. } | Workload::SlowConsumer { .. } => {
            let (subs, rate, publishers, pad, broadcast) = match &w {
                Workload::Fanout {
                    subs,
                    rate,
                    publishers,
                    pad,
                    broadcast,
                    ..
                } => (subs, rate, publishers, pad, broadcast),
                Workload::SlowConsumer {
                    subs,
                    rate,
                    pad,
                    broadcast,
                    ..
                } => (subs, rate, &1usize, pad, broadcast),
                _ => unreachable!(),
            };
            let slow = matches!(w, Workload::SlowConsumer { .. });
            // Pusher client events go only to private (or presence) channels,
            // and only from a subscriber: sockudo's publisher subscribes too,
            // and the server leaves it out of the fan-out.
            let topic = if c.target == Target::Sockudo {
                "private-bench"
            } else {
                "bench"
            }
            .to_owned();
            let sub_setup = |i: usize| {
                let mut s = Setup {
                    user: format!("s{i}"),
                    ..Setup::default()
                };
                if *broadcast && c.target == Target::Pubsub {
                    s.user = "fan".into();
                } else {
                    s.topic = Some(topic.clone());
                }
                s
            };
            for i in range {
                n_setup += 1;
                let (ctl, c, setup) = (ctl.clone(), c.clone(), sub_setup(i));
                tokio::task::spawn_local(async move {
                    if let Some(s) = ctl.open(&c, index, i, &setup, None).await {
                        ctl.receivers.borrow_mut().push(s);
                    }
                });
            }
            if index == 0 {
                if slow {
                    n_setup += 1;
                    let (ctl, c, mut setup) = (ctl.clone(), c.clone(), sub_setup(usize::MAX));
                    setup.user = if setup.user == "fan" {
                        "fan".into()
                    } else {
                        "slow".into()
                    };
                    let rcvbuf = match &w {
                        Workload::SlowConsumer { slow_rcvbuf, .. } => Some(*slow_rcvbuf),
                        _ => None,
                    };
                    tokio::task::spawn_local(async move {
                        let Some(s) = ctl.open(&c, index, 999_999, &setup, rcvbuf).await else {
                            return;
                        };
                        let go = ctl.go().await;
                        slow_reader(s, go, &ctl).await;
                    });
                }
                let pubs = (*publishers).max(1);
                let per_pub = rate / *subs as f64 / pubs as f64;
                for p in 0..pubs {
                    n_setup += 1;
                    let (ctl, c) = (ctl.clone(), c.clone());
                    let bcast = *broadcast && c.target == Target::Pubsub;
                    let setup = Setup {
                        user: if bcast {
                            "fan".into()
                        } else {
                            format!("pub{p}")
                        },
                        topic: (c.target == Target::Sockudo).then(|| topic.clone()),
                        ..Setup::default()
                    };
                    let mut tpl =
                        c.target
                            .publish_template(&format!("pub{p}"), &topic, *pad, bcast);
                    tokio::task::spawn_local(async move {
                        let Some(s) = ctl.open(&c, index, 1_000_000 + p, &setup, None).await else {
                            return;
                        };
                        let go = ctl.go().await;
                        let period = 1e6 / per_pub;
                        let phase = period * p as f64 / pubs as f64;
                        let mut seq = 0;
                        open_loop(s, go, period, phase, &mut |buf, ts| {
                            buf.extend_from_slice(tpl.stamp(ts, seq));
                            seq += 1;
                            1
                        })
                        .await;
                    });
                }
            }
        }
        Workload::Dm {
            users,
            tabs,
            rate,
            single,
            ..
        } => {
            // Pusher's user channels (#server-to-user-<id>, after
            // pusher:signin) take events only from the HTTP API, and a client
            // event needs its sender subscribed to the channel: no clean
            // client-to-user mapping.
            anyhow::ensure!(
                c.target != Target::Sockudo,
                "dm: no Pusher mapping for sockudo"
            );
            let tabs = (*tabs).max(1);
            let users = *users;
            // Whole users per process.
            let urange = split_range(users, index, procs);
            for u in urange {
                for t in 0..tabs {
                    n_setup += 1;
                    let i = u * tabs + t;
                    let (ctl, c, rate, single) = (ctl.clone(), c.clone(), *rate, *single);
                    let mut setup = Setup {
                        user: format!("u{u}"),
                        ..Setup::default()
                    };
                    if matches!(c.target, Target::Nats | Target::Centrifuge) {
                        setup.user_channel = true;
                    }
                    let my_tag = tag(i);
                    tokio::task::spawn_local(async move {
                        let Some(s) = ctl.open(&c, index, i, &setup, None).await else {
                            return;
                        };
                        if t != 0 || rate <= 0.0 {
                            ctl.receivers.borrow_mut().push(s);
                            return;
                        }
                        let go = ctl.go().await;
                        let period = 1e6 / rate;
                        let phase = fastrand::f64() * period;
                        let me = format!("u{u}");
                        let mut seq = 0;
                        open_loop(s, go, period, phase, &mut |buf, ts| {
                            let mut to = fastrand::usize(..users);
                            if to == u {
                                to = (to + 1) % users;
                            }
                            c.target.dm_frames(
                                buf,
                                &my_tag,
                                seq,
                                &me,
                                &format!("u{to}"),
                                ts,
                                single,
                            );
                            seq += 1;
                            1
                        })
                        .await;
                    });
                }
            }
        }
        Workload::PresenceChurn {
            churn,
            hold,
            off,
            grace_ms,
            watch_per_conn,
            ..
        } => {
            for i in range {
                n_setup += 1;
                let (ctl, c) = (ctl.clone(), c.clone());
                let setup = Setup {
                    user: format!("h{}", i / 3),
                    ..Setup::default()
                };
                tokio::task::spawn_local(async move {
                    let Some(s) = ctl.open(&c, index, i, &setup, None).await else {
                        return;
                    };
                    let go = ctl.go().await;
                    receive_until(s, go, None).await;
                });
            }
            if index == 0 {
                let cycle = hold + off;
                let pool = (churn * cycle).ceil() as usize;
                // (connect started, close sent) per churning user, µs.
                let times: Rc<RefCell<Vec<(u64, u64)>>> = Rc::new(RefCell::new(vec![(0, 0); pool]));
                let grace_us = grace_ms * 1000;
                for (wi, chunk) in (0..pool)
                    .collect::<Vec<_>>()
                    .chunks((*watch_per_conn).max(1))
                    .enumerate()
                {
                    n_setup += 1;
                    let (ctl, c, times) = (ctl.clone(), c.clone(), times.clone());
                    let setup = Setup {
                        user: format!("w{wi}"),
                        watch: chunk.iter().map(|j| format!("c{j}")).collect(),
                        ..Setup::default()
                    };
                    tokio::task::spawn_local(async move {
                        let Some(s) = ctl.open(&c, index, 2_000_000 + wi, &setup, None).await
                        else {
                            return;
                        };
                        let go = ctl.go().await;
                        let mut on = |p: &[u8]| on_presence_event(p, &times, grace_us);
                        receive_until(s, go, Some(&mut on)).await;
                    });
                }
                for j in 0..pool {
                    let (ctl, c, times) = (ctl.clone(), c.clone(), times.clone());
                    let (hold, cycle, churn) = (*hold, cycle, *churn);
                    tokio::task::spawn_local(async move {
                        let go = ctl.go().await;
                        churn_user(
                            &ctl,
                            &c,
                            index,
                            j,
                            go,
                            (j as f64 / churn) % cycle,
                            hold,
                            cycle,
                            &times,
                        )
                        .await;
                    });
                }
            }
        }
    }

    // Wait for every connection to be set up (or to have failed).
    while ctl.ready.get() + ctl.failed.get() < n_setup {
        ctl.notify.notified().await;
    }
    let first_error = stats::STATS.with(|s| s.borrow().first_error.clone());
    println!(
        "READY {}",
        json!({"conns": ctl.ready.get(), "failed": ctl.failed.get(), "first_error": first_error})
    );
    std::io::stdout().flush()?;

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let line = lines.next_line().await?.context("no GO from the parent")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    anyhow::ensure!(v.len() == 5, "bad GO line: {line}");
    let go = Go {
        go_at: v[0],
        start: v[1],
        end: v[2],
        drain_end: v[3],
        split: v[4],
    };
    stats::set_window(go.start, go.end);
    stats::set_split(go.split);
    go_tx.send(Some(go)).ok();
    let receivers = ctl.receivers.take();
    if !receivers.is_empty() {
        let schedule = match &w {
            Workload::Fanout {
                subs,
                rate,
                read_between: true,
                ..
            } => {
                // Publishers are phased evenly: one publication per interval.
                let every_us = 1e6 * *subs as f64 / rate;
                Some(crate::receivers::ReadSchedule {
                    first_us: go.go_at as f64 + every_us / 2.0,
                    every_us,
                })
            }
            _ => None,
        };
        tokio::task::spawn_local(async move {
            if let Err(e) = crate::receivers::run(receivers, go, schedule).await {
                stats::error(|| format!("receive-only connections: {e}"));
            }
        });
    }
    // CPU over the measured window only, as the server's is: warm-up and
    // drain are lighter, and counting them hid a generator busy all window.
    sleep_until(at(go.start)).await;
    let cpu0 = proc_cpu_s("self").unwrap_or(0.0);
    sleep_until(at(go.end)).await;
    let cpu1 = proc_cpu_s("self").unwrap_or(0.0);
    sleep_until(at(go.drain_end + 50_000)).await;
    let mut r = stats::take_result(ctl.ready.get() as u64, cpu1 - cpu0);
    stats::write_trace().context("writing the trace")?;
    r.extra = ctl.extra.borrow().clone();
    PER_CONN.with(|v| {
        let mut v = v.borrow_mut();
        if !v.is_empty() {
            v.sort_unstable();
            let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
            r.extra.insert(
                "per_conn_answers".into(),
                json!({"min": q(0.0), "p1": q(0.01), "p10": q(0.1), "p50": q(0.5), "max": q(1.0)}),
            );
        }
    });
    println!("RESULT {}", serde_json::to_string(&r)?);
    std::io::stdout().flush()?;
    Ok(())
}

thread_local! {
    /// Answers each closed-loop connection got inside the window (fairness).
    static PER_CONN: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Closed loop: `inflight` requests outstanding per connection, a new one as
/// soon as an answer arrives, until the window ends.
/// `pongs`: the answers are sockudo's `pusher:pong`s (timed by Session::read_pongs).
async fn rpc_closed(s: Session, tpl: &mut Template, go: Go, inflight: usize, pongs: bool) {
    let mut answered = 0u64;
    rpc_closed_inner(s, tpl, go, inflight, pongs, &mut answered).await;
    PER_CONN.with(|v| v.borrow_mut().push(answered));
}

async fn rpc_closed_inner(
    mut s: Session,
    tpl: &mut Template,
    go: Go,
    inflight: usize,
    pongs: bool,
    answered: &mut u64,
) {
    sleep_until(at(go.go_at)).await;
    let mut seq = 0u64;
    let mut outstanding = 0usize;
    let mut buf = Vec::with_capacity(256);
    let mut stamps = VecDeque::new();
    for _ in 0..inflight.max(1) {
        let ts = now_us();
        buf.extend_from_slice(tpl.stamp(ts, seq));
        if pongs {
            stamps.push_back(ts);
        }
        seq += 1;
        stats::count_sent(ts, 1);
        outstanding += 1;
    }
    if s.send(&buf).await.is_err() {
        return;
    }
    let deadline = sleep_until(at(go.drain_end));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            () = &mut deadline => break,
            r = s.readable() => if r.is_err() { break },
        }
        let read = if pongs {
            s.read_pongs(&mut stamps)
        } else {
            s.read_deliveries()
        };
        let found = match read {
            Ok(n) => n,
            Err(_) => break,
        };
        if s.has_replies() && s.flush_replies().await.is_err() {
            break;
        }
        if s.closed {
            stats::STATS.with(|st| st.borrow_mut().closed_early += 1);
            break;
        }
        outstanding = outstanding.saturating_sub(found);
        let now = now_us();
        if now >= go.start && now < go.end {
            *answered += found as u64;
        }
        if now < go.end {
            if found > 0 {
                buf.clear();
                for _ in 0..found {
                    let ts = now_us();
                    buf.extend_from_slice(tpl.stamp(ts, seq));
                    if pongs {
                        stamps.push_back(ts);
                    }
                    seq += 1;
                    stats::count_sent(ts, 1);
                    outstanding += 1;
                }
                if s.send(&buf).await.is_err() {
                    break;
                }
            }
        } else if outstanding == 0 {
            break;
        }
    }
}

/// Open loop: sends on a fixed schedule (stamped with the scheduled time, so
/// a stalled sender cannot hide latency), reads whatever arrives.
async fn open_loop(
    mut s: Session,
    go: Go,
    period_us: f64,
    phase_us: f64,
    make: &mut dyn FnMut(&mut Vec<u8>, u64) -> u64,
) {
    let mut next = go.go_at as f64 + phase_us;
    let timer = sleep_until(at(next as u64));
    tokio::pin!(timer);
    let deadline = sleep_until(at(go.drain_end));
    tokio::pin!(deadline);
    let mut buf = Vec::with_capacity(512);
    loop {
        tokio::select! {
            biased;
            () = &mut deadline => break,
            () = &mut timer, if next < go.end as f64 => {
                let now = now_us() as f64;
                buf.clear();
                while next <= now && next < go.end as f64 {
                    let ts = next as u64;
                    let n = make(&mut buf, ts);
                    stats::count_sent(ts, n);
                    next += period_us;
                }
                if !buf.is_empty() && s.send(&buf).await.is_err() {
                    stats::error(|| "send failed".into());
                    break;
                }
                timer.as_mut().reset(at(next as u64));
            }
            r = s.readable() => {
                if r.is_err() || s.read_deliveries().is_err() {
                    break;
                }
                if s.has_replies() && s.flush_replies().await.is_err() {
                    break;
                }
                if s.closed {
                    stats::STATS.with(|st| st.borrow_mut().closed_early += 1);
                    break;
                }
            }
        }
    }
}

/// Receives until the drain deadline; `on` replaces delivery counting.
type OnData<'a> = Option<&'a mut dyn FnMut(&[u8])>;

async fn receive_until(mut s: Session, go: Go, mut on: OnData<'_>) {
    let deadline = sleep_until(at(go.drain_end));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            () = &mut deadline => break,
            r = s.readable() => {
                if r.is_err() {
                    break;
                }
                let ok = match on.as_mut() {
                    Some(f) => s.read(*f).is_ok(),
                    None => s.read_deliveries().is_ok(),
                };
                if !ok || (s.has_replies() && s.flush_replies().await.is_err()) {
                    break;
                }
                if s.closed {
                    if now_us() < go.end {
                        stats::STATS.with(|st| st.borrow_mut().closed_early += 1);
                    }
                    break;
                }
            }
        }
    }
}

/// The slow consumer: reads (and discards) until the split, then stops
/// reading; at the end finds out whether the server closed it.
async fn slow_reader(mut s: Session, go: Go, ctl: &Ctl) {
    let split = sleep_until(at(go.split));
    tokio::pin!(split);
    loop {
        tokio::select! {
            biased;
            () = &mut split => break,
            r = s.readable() => {
                if r.is_err() || s.read(&mut |_| {}).is_err() || s.closed {
                    break;
                }
                let _ = s.flush_replies().await;
            }
        }
    }
    let stopped_at = now_us();
    ctl.extra.borrow_mut().insert(
        "slow_stopped_reading_at_s".into(),
        json!((stopped_at as f64 - go.start as f64) / 1e6),
    );
    sleep_until(at(go.end)).await;
    // Read what the server had queued, to see whether it closed us; finish
    // before the process reports.
    let budget = go
        .drain_end
        .saturating_sub(now_us() + 100_000)
        .min(3_000_000);
    let mut bytes = 0usize;
    let _ = tokio::time::timeout(Duration::from_micros(budget), async {
        while !s.closed {
            if s.readable().await.is_err() {
                break;
            }
            let mut on = |p: &[u8]| bytes += p.len();
            if s.read(&mut on).is_err() {
                break;
            }
        }
    })
    .await;
    let mut extra = ctl.extra.borrow_mut();
    extra.insert("slow_closed_by_server".into(), json!(s.closed));
    extra.insert("slow_bytes_read_after_resume".into(), json!(bytes));
}

#[allow(clippy::too_many_arguments)]
async fn churn_user(
    ctl: &Ctl,
    c: &Common,
    index: usize,
    j: usize,
    go: Go,
    offset_s: f64,
    hold: f64,
    cycle: f64,
    times: &Rc<RefCell<Vec<(u64, u64)>>>,
) {
    let mut t = go.go_at + (offset_s * 1e6) as u64;
    let setup = Setup {
        user: format!("c{j}"),
        ..Setup::default()
    };
    while t < go.end {
        sleep_until(at(t)).await;
        let t0 = now_us();
        times.borrow_mut()[j].0 = t0;
        let ep = endpoint(c.target, c.port, c.hosts, index, 3_000_000 + j, &setup.user);
        let s = match Session::open(
            c.target,
            &ep,
            &setup,
            Duration::from_secs_f64(c.setup_timeout),
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                stats::error(|| format!("churn connect: {e}"));
                t += (cycle * 1e6) as u64;
                continue;
            }
        };
        stats::count_sent(t0, 1);
        let hold_end = t0 + (hold * 1e6) as u64;
        let g = Go {
            drain_end: hold_end,
            end: hold_end,
            ..go
        };
        // Hold (answering heartbeats), then close cleanly.
        let s = hold_session(s, g).await;
        let t1 = now_us();
        times.borrow_mut()[j].1 = t1;
        stats::count_sent(t1, 1);
        if let Some(s) = s {
            s.close(Duration::from_secs(1)).await;
        }
        t += (cycle * 1e6) as u64;
    }
    let _ = ctl;
}

async fn hold_session(mut s: Session, go: Go) -> Option<Session> {
    let deadline = sleep_until(at(go.drain_end));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            () = &mut deadline => return Some(s),
            r = s.readable() => {
                if r.is_err() || s.read(&mut |_| {}).is_err() || s.closed {
                    return None;
                }
                if s.flush_replies().await.is_err() {
                    return None;
                }
            }
        }
    }
}

/// A `@pubsub/PRESENCE_CHANGE` event at a watcher: latency from the churning
/// client's connect (ONLINE) or close (OFFLINE, minus the grace period).
fn on_presence_event(p: &[u8], times: &Rc<RefCell<Vec<(u64, u64)>>>, grace_us: u64) {
    if memchr::memmem::find(p, b"@pubsub/PRESENCE_CHANGE").is_none() {
        return;
    }
    let now = now_us();
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(p) else {
        return;
    };
    let a = &v["action"];
    let (Some(user), Some(status)) = (a["user"].as_str(), a["status"].as_str()) else {
        return;
    };
    let Some(j) = user.strip_prefix('c').and_then(|x| x.parse::<usize>().ok()) else {
        return;
    };
    let Some(&(connect_at, close_at)) = times.borrow().get(j) else {
        return;
    };
    match status {
        "ONLINE" if stats::in_window(connect_at) => {
            stats::record_latency(now.saturating_sub(connect_at), false)
        }
        "OFFLINE" if stats::in_window(close_at) => {
            stats::record_latency(now.saturating_sub(close_at).saturating_sub(grace_us), true)
        }
        _ => {}
    }
}
