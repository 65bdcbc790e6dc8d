//! `pubsub-bench`: the load generator behind `bench/run`.
//!
//! One invocation runs one workload against one server and prints one JSON
//! line with the merged result. When a workload needs more connections than
//! one process should hold (`--max-conns-per-proc`, 15,000: the machine
//! allows 20,000 open files per process), the command re-executes itself as
//! several child processes, each with one current-thread runtime, and merges
//! their histograms. Children inherit the CPU affinity (`taskset`) of the
//! parent.
//!
//! Parent/child protocol on stdin/stdout: the child prints `READY {json}` once
//! its connections are set up, waits for `GO <go_at> <start> <end> <drain_end>
//! <split>` (µs since the epoch), runs, then prints `RESULT {json}`.

mod pusher;
mod receivers;
mod stats;
mod target;
mod work;
mod ws;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::{Value, json};

use stats::{ChildResult, new_hist, now_us, proc_cpu_s, proc_rss_kib, summarize};
use target::Target;

#[derive(Parser, Debug)]
#[command(
    name = "pubsub-bench",
    version,
    about = "Load generator for bench/run",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct Common {
    /// Server under test (speaks its protocol).
    #[arg(long, value_enum, default_value = "pubsub")]
    pub target: Target,
    /// Server port (it must listen on 0.0.0.0 or on all of 127.0.0.1..=hosts).
    #[arg(long, default_value_t = 4001)]
    pub port: u16,
    /// Spread connections over destinations 127.0.0.1..=hosts.
    #[arg(long, default_value_t = 4)]
    pub hosts: u8,
    /// Server process to sample (/proc/<pid>: RSS, CPU).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Generator processes (0: as many as --max-conns-per-proc requires).
    #[arg(long, default_value_t = 0)]
    pub procs: usize,
    #[arg(long, default_value_t = 15_000)]
    pub max_conns_per_proc: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds after the window during which late messages still count.
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
    /// Handshakes in progress at once per process.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Seconds one connection may take to be set up.
    #[arg(long, default_value_t = 60.0)]
    pub setup_timeout: f64,
    /// Write the measured window's bounds to this file once they are fixed
    /// (after the connects), as "START END" in microseconds since the Unix
    /// epoch: for a profiler that must count the window and nothing else
    /// (bench/instructions-per-rpc).
    #[arg(long)]
    pub window_file: Option<std::path::PathBuf>,
    /// Fetch http://127.0.0.1:<port>/stats at the end (PubSub only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub fetch_stats: bool,
    #[arg(long, hide = true)]
    pub child: Option<usize>,
}

#[derive(Subcommand, Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Request/response: PubSub sendToServer (echo handler), peers' echo.
    Rpc {
        #[command(flatten)]
        #[serde(flatten)]
        c: Common,
        #[arg(long, default_value_t = 100)]
        conns: usize,
        /// Requests in flight per connection (closed loop).
        #[arg(long, default_value_t = 1)]
        inflight: usize,
        /// Total requests per second, open loop (0: closed loop, as fast as answered).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// PubSub only, for diagnosis: `self-send` replaces sendToServer with a
        /// sendToUser to the connection's own user (answered without the
        /// handler path; the delivered message is the "answer"). sockudo
        /// only: `ping`, pusher:ping answered by pusher:pong, instead of a
        /// client event to the paired connection.
        #[arg(long, default_value = "handler")]
        rpc_kind: String,
    },
    /// Idle connections of users with several tabs: memory, connect time, idle CPU.
    Idle {
        #[command(flatten)]
        #[serde(flatten)]
        c: Common,
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        #[arg(long, default_value_t = 3)]
        tabs: usize,
        /// Seconds to stay connected and idle while measuring server CPU.
        #[arg(long, default_value_t = 10.0)]
        idle: f64,
    },
    /// One topic with many members; a publisher at a fixed offered rate.
    Fanout {
        #[command(flatten)]
        #[serde(flatten)]
        c: Common,
        #[arg(long, default_value_t = 10_000)]
        subs: usize,
        /// Offered deliveries per second (publications/s × subscribers).
        #[arg(long, default_value_t = 400_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Extra payload bytes per message.
        #[arg(long, default_value_t = 0)]
        pad: usize,
        /// PubSub only: fan out with `broadcast` to the tabs of one user instead of a topic.
        #[arg(long)]
        broadcast: bool,
        /// Read the members only halfway between publications, so that the
        /// generator's core is idle while the server writes a publication
        /// out. A read then waits up to one publication's interval: time
        /// deliveries by their kernel arrival stamps (`p99 at arrival`).
        #[arg(long)]
        read_between: bool,
    },
    /// Direct messages: each user sends to a random user; every tab of the
    /// recipient and the sender's other tabs receive it.
    Dm {
        #[command(flatten)]
        #[serde(flatten)]
        c: Common,
        #[arg(long, default_value_t = 3000)]
        users: usize,
        #[arg(long, default_value_t = 3)]
        tabs: usize,
        /// Sends per second per user.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// PubSub only: one sendToUser naming both users (the sending tab gets a
        /// copy too) instead of sendToUser + broadcast.
        #[arg(long)]
        single: bool,
    },
    /// Held connections plus connects/disconnects per second, watched with `watch`.
    PresenceChurn {
        #[command(flatten)]
        #[serde(flatten)]
        c: Common,
        #[arg(long, default_value_t = 10_000)]
        held: usize,
        /// Connects per second (and as many disconnects).
        #[arg(long, default_value_t = 200.0)]
        churn: f64,
        /// Seconds a churning client stays connected.
        #[arg(long, default_value_t = 5.0)]
        hold: f64,
        /// Seconds a churning user stays offline (must exceed the grace period).
        #[arg(long, default_value_t = 10.0)]
        off: f64,
        /// The server's presence grace period (subtracted from OFFLINE latency).
        #[arg(long, default_value_t = 5000)]
        grace_ms: u64,
        /// Users per watcher connection (the server's maxWatchedUsers).
        #[arg(long, default_value_t = 1000)]
        watch_per_conn: usize,
    },
    /// Fan-out where one member stops reading halfway: the others' latency and
    /// the server's memory before and after.
    SlowConsumer {
        #[command(flatten)]
        #[serde(flatten)]
        c: Common,
        #[arg(long, default_value_t = 1000)]
        subs: usize,
        /// Offered deliveries per second.
        #[arg(long, default_value_t = 50_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 512)]
        pad: usize,
        #[arg(long)]
        broadcast: bool,
        /// SO_RCVBUF of the slow client.
        #[arg(long, default_value_t = 4096)]
        slow_rcvbuf: u32,
    },
}

impl Workload {
    pub fn common(&self) -> &Common {
        match self {
            Workload::Rpc { c, .. }
            | Workload::Idle { c, .. }
            | Workload::Fanout { c, .. }
            | Workload::Dm { c, .. }
            | Workload::PresenceChurn { c, .. }
            | Workload::SlowConsumer { c, .. } => c,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Workload::Rpc { .. } => "rpc",
            Workload::Idle { .. } => "idle",
            Workload::Fanout { .. } => "fanout",
            Workload::Dm { .. } => "dm",
            Workload::PresenceChurn { .. } => "presence-churn",
            Workload::SlowConsumer { .. } => "slow-consumer",
        }
    }

    /// Connections split over processes (extras live in process 0).
    fn main_population(&self) -> usize {
        match self {
            Workload::Rpc { conns, .. } | Workload::Idle { conns, .. } => *conns,
            Workload::Fanout { subs, .. } | Workload::SlowConsumer { subs, .. } => *subs,
            Workload::Dm { users, tabs, .. } => users * tabs,
            Workload::PresenceChurn { held, .. } => *held,
        }
    }

    fn extra_conns(&self) -> usize {
        match self {
            Workload::Fanout { publishers, .. } => *publishers,
            Workload::SlowConsumer { .. } => 2,
            Workload::PresenceChurn {
                churn,
                hold,
                off,
                watch_per_conn,
                ..
            } => {
                let pool = (churn * (hold + off)).ceil() as usize;
                (churn * (hold + 1.0)).ceil() as usize + pool.div_ceil(*watch_per_conn)
            }
            _ => 0,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let w = cli.workload;
    let c = w.common().clone();
    match c.child {
        Some(index) => work::child_main(w, index, c.procs.max(1)),
        None => parent(w),
    }
}

struct Sample {
    t_us: u64,
    rss_kib: u64,
    cpu_s: f64,
}

fn sample(pid: &Option<String>) -> Option<Sample> {
    let pid = pid.as_ref()?;
    Some(Sample {
        t_us: now_us(),
        rss_kib: proc_rss_kib(pid)?,
        cpu_s: proc_cpu_s(pid)?,
    })
}

fn read_tagged(
    reader: &mut BufReader<std::process::ChildStdout>,
    tag: &str,
    index: usize,
) -> anyhow::Result<Value> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("generator process {index} exited before {tag}");
        }
        let l = line.trim_end();
        if let Some(rest) = l.strip_prefix(tag) {
            return Ok(serde_json::from_str(rest.trim())?);
        }
        if let Some(rest) = l.strip_prefix("FAIL") {
            bail!("generator process {index} failed: {}", rest.trim());
        }
        eprintln!("[gen {index}] {l}");
    }
}

fn parent(w: Workload) -> anyhow::Result<()> {
    let c = w.common().clone();
    let total = w.main_population() + w.extra_conns();
    let procs = c.procs.max(total.div_ceil(c.max_conns_per_proc)).max(1);
    let pid = c.server_pid.map(|p| p.to_string());
    let before = sample(&pid);

    let exe = std::env::current_exe()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut children: Vec<Child> = Vec::new();
    let mut readers = Vec::new();
    let mut stdins: Vec<ChildStdin> = Vec::new();
    let kill_all = |children: &mut Vec<Child>| {
        for ch in children.iter_mut() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    };
    for i in 0..procs {
        let mut child = Command::new(&exe)
            .args(&args)
            .args(["--child", &i.to_string(), "--procs", &procs.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start a generator process")?;
        readers.push(BufReader::new(child.stdout.take().context("child stdout")?));
        stdins.push(child.stdin.take().context("child stdin")?);
        children.push(child);
    }
    let t_spawn = now_us();
    let mut ready = Vec::new();
    for (i, r) in readers.iter_mut().enumerate() {
        match read_tagged(r, "READY", i) {
            Ok(v) => ready.push(v),
            Err(e) => {
                kill_all(&mut children);
                return Err(e);
            }
        }
    }
    let connect_wall_s = (now_us() - t_spawn) as f64 / 1e6;
    let connected: u64 = ready.iter().map(|v| v["conns"].as_u64().unwrap_or(0)).sum();
    if connected == 0 {
        kill_all(&mut children);
        let why = ready
            .iter()
            .find_map(|v| v["first_error"].as_str().map(str::to_owned))
            .unwrap_or_default();
        bail!("no connection could be set up: {why}");
    }
    let at_ready = sample(&pid);
    let mut after_idle = None;
    if let Workload::Idle { idle, .. } = &w {
        std::thread::sleep(Duration::from_secs_f64(*idle));
        after_idle = sample(&pid);
    }

    let go_at = now_us() + 300_000;
    let start = go_at + (c.warmup * 1e6) as u64;
    let end = start + (c.duration * 1e6) as u64;
    let mut drain = c.drain;
    if let Workload::PresenceChurn { grace_ms, .. } = &w {
        drain = drain.max(*grace_ms as f64 / 1000.0 + 2.0);
    }
    let drain_end = end + (drain * 1e6) as u64;
    let split = match &w {
        Workload::SlowConsumer { .. } => start + (c.duration * 0.5e6) as u64,
        _ => u64::MAX,
    };
    for s in stdins.iter_mut() {
        writeln!(s, "GO {go_at} {start} {end} {drain_end} {split}")?;
        s.flush()?;
    }
    if let Some(path) = &c.window_file {
        // Renamed into place, so a reader polling for it never sees half a line.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, format!("{start} {end}\n"))
            .and_then(|()| std::fs::rename(&partial, path))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }

    let samples = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let samples = samples.clone();
        let stop = stop.clone();
        let pid = pid.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(s) = sample(&pid) {
                    samples.lock().expect("samples").push(s);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };

    let mut results: Vec<ChildResult> = Vec::new();
    for (i, r) in readers.iter_mut().enumerate() {
        match read_tagged(r, "RESULT", i) {
            Ok(v) => results.push(serde_json::from_value(v)?),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                kill_all(&mut children);
                return Err(e);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    drop(stdins);
    for ch in children.iter_mut() {
        let _ = ch.wait();
    }
    let samples = std::mem::take(&mut *samples.lock().expect("samples"));

    // Merge.
    let mut hist = new_hist();
    let mut hist_b = new_hist();
    let mut arrival_hist = new_hist();
    let mut connect_hist = new_hist();
    let (mut sent, mut received, mut errors, mut failed, mut closed_early, mut conns) =
        (0, 0, 0, 0, 0, 0);
    let mut cpu = 0.0;
    let mut first_error = None;
    let mut extra = serde_json::Map::new();
    for r in &results {
        r.hist.add_to(&mut hist);
        r.hist_b.add_to(&mut hist_b);
        r.arrival_hist.add_to(&mut arrival_hist);
        r.connect_hist.add_to(&mut connect_hist);
        sent += r.sent;
        received += r.received;
        errors += r.errors;
        failed += r.connect_failed;
        closed_early += r.closed_early;
        conns += r.conns;
        cpu += r.cpu_s;
        if first_error.is_none() {
            first_error.clone_from(&r.first_error);
        }
        for (k, v) in &r.extra {
            match (extra.get(k).and_then(Value::as_f64), v.as_f64()) {
                (Some(a), Some(b)) => {
                    extra.insert(k.clone(), json!(a + b));
                }
                _ => {
                    extra.insert(k.clone(), v.clone());
                }
            }
        }
    }
    let window = c.duration;
    let per_send = match &w {
        Workload::Fanout { subs, .. } | Workload::SlowConsumer { subs, .. } => *subs as u64,
        Workload::Dm { tabs, single, .. } => c.target.dm_deliveries(*tabs as u64, *single),
        _ => 1,
    };
    let expected = sent * per_send;
    let loss_pct = if expected > 0 {
        100.0 * (expected.saturating_sub(received)) as f64 / expected as f64
    } else {
        0.0
    };
    let offered = match &w {
        Workload::Rpc { rate, .. } => *rate,
        Workload::Fanout { rate, .. } | Workload::SlowConsumer { rate, .. } => *rate,
        Workload::Dm {
            users,
            rate,
            tabs,
            single,
            ..
        } => *users as f64 * rate * c.target.dm_deliveries(*tabs as u64, *single) as f64,
        Workload::PresenceChurn { churn, .. } => 2.0 * churn,
        Workload::Idle { .. } => 0.0,
    };

    // Server figures.
    let cpu_between = |a: u64, b: u64| -> Option<f64> {
        let first = samples.iter().find(|s| s.t_us >= a)?;
        let last = samples.iter().rev().find(|s| s.t_us <= b)?;
        if last.t_us <= first.t_us {
            return None;
        }
        Some(100.0 * (last.cpu_s - first.cpu_s) / ((last.t_us - first.t_us) as f64 / 1e6))
    };
    let rss_in = |a: u64, b: u64| -> Vec<u64> {
        samples
            .iter()
            .filter(|s| s.t_us >= a && s.t_us <= b)
            .map(|s| s.rss_kib)
            .collect()
    };
    let server = pid.as_ref().map(|_| {
        let base = before.as_ref().map(|s| s.rss_kib);
        let ready_rss = at_ready.as_ref().map(|s| s.rss_kib);
        let idle_rss = after_idle.as_ref().map(|s| s.rss_kib);
        let per_conn = match (&w, base, idle_rss.or(ready_rss)) {
            (Workload::Idle { .. }, Some(b), Some(r)) if connected > 0 => {
                Some((r.saturating_sub(b)) as f64 * 1024.0 / connected as f64)
            }
            _ => None,
        };
        let idle_cpu = match (&at_ready, &after_idle) {
            (Some(a), Some(b)) if b.t_us > a.t_us => Some(100.0 * (b.cpu_s - a.cpu_s) / ((b.t_us - a.t_us) as f64 / 1e6)),
            _ => None,
        };
        let run_rss = rss_in(start, end);
        let first_half: Vec<u64> = rss_in(start, start + (end - start) / 2);
        let second_half: Vec<u64> = rss_in(start + (end - start) / 2, end);
        let avg = |v: &[u64]| if v.is_empty() { None } else { Some(v.iter().sum::<u64>() as f64 / v.len() as f64) };
        json!({
            "rss_before_kib": base,
            "rss_ready_kib": ready_rss,
            "rss_after_idle_kib": idle_rss,
            "rss_per_conn_bytes": per_conn,
            "idle_cpu_pct": idle_cpu,
            "cpu_pct": cpu_between(start, end),
            "rss_start_kib": run_rss.first(),
            "rss_end_kib": run_rss.last(),
            "rss_max_kib": samples.iter().map(|s| s.rss_kib).max(),
            "rss_first_half_avg_kib": avg(&first_half),
            "rss_second_half_avg_kib": avg(&second_half),
            "samples": samples.iter().map(|s| json!([((s.t_us as f64 - start as f64) / 1e6 * 100.0).round() / 100.0, s.rss_kib])).collect::<Vec<_>>(),
        })
    });
    let server_stats = if c.target == Target::Pubsub && c.fetch_stats {
        fetch_stats(c.port)
    } else {
        None
    };
    let gen_window = (end - start) as f64 / 1e6;
    let out = json!({
        "workload": w.name(),
        "target": c.target.name(),
        "params": serde_json::to_value(&w)?,
        "procs": procs,
        "conns": conns,
        "connect_failed": failed,
        "closed_early": closed_early,
        "errors": errors,
        "first_error": first_error,
        "window_s": window,
        "sent": sent,
        "received": received,
        "expected": expected,
        "loss_pct": loss_pct,
        "offered_per_s": offered,
        "sent_per_s": sent as f64 / window,
        "received_per_s": received as f64 / window,
        "latency": summarize(&hist),
        "latency_b": summarize(&hist_b),
        "latency_at_arrival": summarize(&arrival_hist),
        "connect": summarize(&connect_hist),
        "connect_wall_s": connect_wall_s,
        "gen_cpu_pct": 100.0 * cpu / gen_window,
        "server": server,
        "server_stats": server_stats,
        "extra": extra,
    });
    println!("{out}");
    Ok(())
}

/// GET /stats from the server (PubSub), plain HTTP/1.0.
fn fetch_stats(port: u16) -> Option<Value> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET /stats HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let json = &body[body.find("\r\n\r\n")? + 4..];
    serde_json::from_str(json).ok()
}
