//! Per-process counters and latency histograms. Each generator process runs
//! one thread, so these are plain thread-locals.
//!
//! The measurement window is defined by the send timestamps carried in the
//! messages: a send counts if it happened inside [start, end), and a received
//! message counts (and is recorded) if its embedded timestamp is inside the
//! window, whenever it arrives before the drain period ends. So loss is exact:
//! every counted send is either received, or lost/late.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use memchr::memmem;
use serde::{Deserialize, Serialize};

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub fn new_hist() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant figures.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

pub struct Stats {
    pub sent: u64,
    pub received: u64,
    pub errors: u64,
    pub hist: Histogram<u64>,
    /// Second histogram for workloads with two phases (slow-consumer) or two
    /// event kinds (presence OFFLINE events).
    pub hist_b: Histogram<u64>,
    /// The deliveries of `hist` timed to when the kernel received them
    /// rather than to when this process read them (see [`set_arrival`]).
    pub arrival_hist: Histogram<u64>,
    pub connect_hist: Histogram<u64>,
    pub connect_failed: u64,
    pub closed_early: u64,
    pub first_error: Option<String>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            sent: 0,
            received: 0,
            errors: 0,
            hist: new_hist(),
            hist_b: new_hist(),
            arrival_hist: new_hist(),
            connect_hist: new_hist(),
            connect_failed: 0,
            closed_early: 0,
            first_error: None,
        }
    }
}

thread_local! {
    pub static STATS: RefCell<Stats> = RefCell::new(Stats::default());
    static WINDOW: Cell<(u64, u64)> = const { Cell::new((u64::MAX, u64::MAX)) };
    /// Messages whose timestamp is at or after this go to `hist_b`.
    static SPLIT: Cell<u64> = const { Cell::new(u64::MAX) };
    /// Kernel receive time (µs) of the read being parsed, 0 if unknown.
    static ARRIVAL: Cell<u64> = const { Cell::new(0) };
}

/// Sets the kernel's receive time of the bytes about to be parsed (0: none).
/// For TCP the kernel reports the stamp of the last segment a read took, so
/// for a frame that came in an earlier segment of the same read this is an
/// upper bound: latency to arrival is at most what is recorded, and the
/// difference to latency at the read is the generator's own delay at least.
pub fn set_arrival(us: u64) {
    ARRIVAL.with(|a| a.set(us));
}

/// The kernel receive time set for the bytes being parsed (0: none).
pub fn arrival() -> u64 {
    ARRIVAL.with(|a| a.get())
}

pub fn set_window(start: u64, end: u64) {
    WINDOW.with(|w| w.set((start, end)));
}

pub fn window() -> (u64, u64) {
    WINDOW.with(|w| w.get())
}

pub fn set_split(at: u64) {
    SPLIT.with(|s| s.set(at));
}

pub fn in_window(ts: u64) -> bool {
    let (s, e) = window();
    ts >= s && ts < e
}

pub fn count_sent(ts: u64, n: u64) {
    if in_window(ts) {
        STATS.with(|s| s.borrow_mut().sent += n);
    }
}

pub fn error(msg: impl FnOnce() -> String) {
    STATS.with(|s| {
        let mut s = s.borrow_mut();
        s.errors += 1;
        if s.first_error.is_none() {
            s.first_error = Some(msg());
        }
    });
}

pub fn record_connect(us: u64) {
    STATS.with(|s| {
        let _ = s.borrow_mut().connect_hist.record(us.max(1));
    });
}

pub fn connect_failed(msg: String) {
    STATS.with(|s| {
        let mut s = s.borrow_mut();
        s.connect_failed += 1;
        if s.first_error.is_none() {
            s.first_error = Some(msg);
        }
    });
}

static TS_KEY: &[u8] = b"\"t\":";

/// Built once: `memmem::find_iter` would build (and rank) a new finder for
/// every payload scanned.
static TS_FINDER: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(TS_KEY));

/// Finds every `"t":<digits>` in a received payload, counts it as one
/// delivery and records its latency. Returns how many were found (counted or
/// not). This is the whole receive path: no JSON parsing.
pub fn scan_deliveries(payload: &[u8], now: u64) -> usize {
    let finder = TS_FINDER.find_iter(payload);
    let mut found = 0;
    let split = SPLIT.with(|s| s.get());
    let arrival = arrival();
    STATS.with(|s| {
        let mut s = s.borrow_mut();
        for at in finder {
            found += 1;
            let mut ts = 0u64;
            for &b in &payload[at + TS_KEY.len()..] {
                if b.is_ascii_digit() {
                    ts = ts * 10 + (b - b'0') as u64;
                } else {
                    break;
                }
            }
            if in_window(ts) {
                s.received += 1;
                let lat = now.saturating_sub(ts).max(1);
                trace(now, lat);
                if ts >= split {
                    let _ = s.hist_b.record(lat);
                } else {
                    let _ = s.hist.record(lat);
                    if arrival != 0 {
                        let _ = s
                            .arrival_hist
                            .record(arrival.saturating_sub(ts).clamp(1, lat));
                    }
                }
            }
        }
    });
    found
}

pub fn record_latency(lat_us: u64, second: bool) {
    if tracing() {
        trace(now_us(), lat_us);
    }
    STATS.with(|s| {
        let mut s = s.borrow_mut();
        s.received += 1;
        let h = if second { &mut s.hist_b } else { &mut s.hist };
        let _ = h.record(lat_us.max(1));
    });
}

/// Where every delivery counted is also written as a row, when the
/// environment names a directory (`PUBSUB_BENCH_TRACE`; `bench/run --trace`
/// sets it). A percentile cannot tell a few connections waiting longer from
/// all of them waiting longer for a while; the rows can
/// (`bench/latency-over-time`). Off, it costs one load per delivery.
static TRACE_DIR: LazyLock<Option<PathBuf>> =
    LazyLock::new(|| std::env::var_os("PUBSUB_BENCH_TRACE").map(PathBuf::from));

/// Rows (time read in µs, latency in µs, connection) of this process, the
/// receiving thread's and the main one's alike; only filled when tracing.
static TRACE: Mutex<Vec<(u64, u32, u32)>> = Mutex::new(Vec::new());

thread_local! {
    /// The connection whose bytes are being parsed, for the trace's rows.
    static READING: Cell<u32> = const { Cell::new(0) };
}

fn tracing() -> bool {
    TRACE_DIR.is_some()
}

/// Names the connection (its descriptor) whose bytes are parsed next.
pub fn reading(conn: u32) {
    if tracing() {
        READING.with(|r| r.set(conn));
    }
}

fn trace(now: u64, lat_us: u64) {
    if tracing() {
        let conn = READING.with(|r| r.get());
        let lat = u32::try_from(lat_us).unwrap_or(u32::MAX);
        if let Ok(mut rows) = TRACE.lock() {
            rows.push((now, lat, conn));
        }
    }
}

/// Writes this process's rows, if tracing, as `<dir>/<pid>.trace`: one line
/// `read_us latency_us connection` per delivery.
pub fn write_trace() -> std::io::Result<()> {
    let Some(dir) = TRACE_DIR.as_ref() else {
        return Ok(());
    };
    std::fs::create_dir_all(dir)?;
    let file = std::fs::File::create(dir.join(format!("{}.trace", std::process::id())))?;
    let mut out = std::io::BufWriter::new(file);
    let rows = std::mem::take(&mut *TRACE.lock().unwrap_or_else(|e| e.into_inner()));
    for (at, lat, conn) in rows {
        writeln!(out, "{at} {lat} {conn}")?;
    }
    out.flush()
}

/// A histogram as (value, count) pairs of its non-empty buckets: mergeable
/// across processes without the serialization feature.
#[derive(Serialize, Deserialize, Default, Clone)]
pub struct Buckets(pub Vec<(u64, u64)>);

impl Buckets {
    pub fn of(h: &Histogram<u64>) -> Self {
        Buckets(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    pub fn add_to(&self, h: &mut Histogram<u64>) {
        for &(v, c) in &self.0 {
            let _ = h.record_n(v.max(1), c);
        }
    }
}

#[derive(Serialize, Deserialize, Default, Clone)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

pub fn summarize(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    let ms = |v: u64| v as f64 / 1000.0;
    Summary {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        mean_ms: h.mean() / 1000.0,
    }
}

/// What one generator process reports to the parent.
#[derive(Serialize, Deserialize, Default, Clone)]
pub struct ChildResult {
    pub conns: u64,
    pub sent: u64,
    pub received: u64,
    pub errors: u64,
    pub connect_failed: u64,
    pub closed_early: u64,
    pub first_error: Option<String>,
    pub hist: Buckets,
    pub hist_b: Buckets,
    #[serde(default)]
    pub arrival_hist: Buckets,
    pub connect_hist: Buckets,
    /// CPU seconds this process used during the measurement window.
    pub cpu_s: f64,
    pub extra: serde_json::Map<String, serde_json::Value>,
}

pub fn take_result(conns: u64, cpu_s: f64) -> ChildResult {
    STATS.with(|s| {
        let s = s.borrow();
        ChildResult {
            conns,
            sent: s.sent,
            received: s.received,
            errors: s.errors,
            connect_failed: s.connect_failed,
            closed_early: s.closed_early,
            first_error: s.first_error.clone(),
            hist: Buckets::of(&s.hist),
            hist_b: Buckets::of(&s.hist_b),
            arrival_hist: Buckets::of(&s.arrival_hist),
            connect_hist: Buckets::of(&s.connect_hist),
            cpu_s,
            extra: Default::default(),
        }
    })
}

/// CPU seconds (user + system) of a process from /proc/<pid>/stat.
pub fn proc_cpu_s(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Resident memory of a process in KiB from /proc/<pid>/status.
pub fn proc_rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_timestamp_in_a_payload_is_found_and_those_in_the_window_counted() {
        // Thread-local state: each test thread starts from its own.
        set_window(1_000, 2_000);
        let payload =
            br#"{"kind":"message","action":{"type":"e","t":1500}}{"x":{"t":999}}"t":1999,"t":"#;
        assert_eq!(scan_deliveries(payload, 2_500), 4);
        STATS.with(|s| {
            let s = s.borrow();
            assert_eq!(s.received, 2, "1500 and 1999 are inside [1000, 2000)");
            assert_eq!(s.hist.len(), 2);
            assert_eq!(s.hist.max(), 1_000, "latency of the frame stamped 1500");
        });
    }

    #[test]
    fn deliveries_read_with_a_kernel_stamp_are_also_timed_to_it() {
        set_window(1_000, 2_000);
        // Stamped at 1,800 by the kernel, read at 2,500.
        set_arrival(1_800);
        scan_deliveries(br#"{"t":1500}{"t":1700}"#, 2_500);
        // A read without a stamp (an unstamped connection) adds none.
        set_arrival(0);
        scan_deliveries(br#"{"t":1600}"#, 2_500);
        STATS.with(|s| {
            let s = s.borrow();
            assert_eq!(s.hist.len(), 3);
            assert_eq!(s.arrival_hist.len(), 2);
            assert_eq!(s.arrival_hist.max(), 300, "1,800 - 1,500");
            assert_eq!(s.arrival_hist.min(), 100, "1,800 - 1,700");
            assert_eq!(s.hist.max(), 1_000, "read latency unchanged");
        });
    }
}
