"""Latency over time, from the rows `bench/run --trace DIR` has the generator
write (one `read_us latency_us connection` line per delivery).

A p99 alone cannot say whether some connections wait longer than the others
or every connection waits longer for a while. This splits the two: each
connection's mean latency (how fair the server is), the rate in 10 ms and
100 ms slots (how steady the host is), and the p99 left once each slot's
own mean is taken out (what the tail would be with a steady rate).
Standard library only.
"""

import statistics
from pathlib import Path

SLOTS_US = (10_000, 100_000)


def read_rows(run_dir):
    """Every row of a run's trace files, sorted by the time it was read."""
    rows = []
    for f in sorted(Path(run_dir).glob("*.trace")):
        with open(f) as fh:
            for line in fh:
                at, lat, conn = line.split()
                rows.append((int(at), int(lat), f"{f.stem}:{conn}"))
    rows.sort()
    return rows


def quantile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def analyse(rows):
    """What `report` prints, as numbers (latencies in ms, rates per second)."""
    if not rows:
        return None
    lats = sorted(r[1] for r in rows)
    mean = statistics.fmean(lats)
    per_conn = {}
    for _, lat, conn in rows:
        per_conn.setdefault(conn, []).append(lat)
    conn_means = sorted(statistics.fmean(v) for v in per_conn.values())
    out = {
        "deliveries": len(rows),
        "mean": mean / 1000,
        "p50": quantile(lats, 0.50) / 1000,
        "p90": quantile(lats, 0.90) / 1000,
        "p99": quantile(lats, 0.99) / 1000,
        "p999": quantile(lats, 0.999) / 1000,
        "connections": len(conn_means),
        "conn_mean_min": conn_means[0] / 1000,
        "conn_mean_median": quantile(conn_means, 0.5) / 1000,
        "conn_mean_max": conn_means[-1] / 1000,
        "slots": {},
    }
    t0 = rows[0][0]
    # Rates are counted from the second slot (the first is partial) to the
    # last one whose requests were all sent inside the window: after the
    # window's last send, deliveries tail off by design.
    last_sent = max(at - lat for at, lat, _ in rows)
    for width in SLOTS_US:
        slots = {}
        for at, lat, _ in rows:
            slots.setdefault((at - t0) // width, []).append(lat)
        first, last = 0, (last_sent - t0) // width
        counts = [len(slots.get(k, ())) for k in range(first + 1, last)]
        rates = sorted(c * 1e6 / width for c in counts)
        slot_mean = {k: statistics.fmean(v) for k, v in slots.items()}
        steady = sorted(lat * mean / slot_mean[(at - t0) // width] for at, lat, _ in rows)
        median_count = statistics.median(counts) if counts else 0
        stalls = [((k - first) * width / 1000, len(slots.get(k, ())) * 1e6 / width)
                  for k in range(first + 1, last) if len(slots.get(k, ())) < median_count / 2]
        out["slots"][width // 1000] = {
            "rate_min": rates[0] if rates else 0,
            "rate_p10": quantile(rates, 0.1) if rates else 0,
            "rate_median": statistics.median(rates) if rates else 0,
            "rate_max": rates[-1] if rates else 0,
            "steady_p99": quantile(steady, 0.99) / 1000,
            "stalls": stalls,
        }
    return out


def report(run_dir):
    """The analysis of one run's directory, as lines of text."""
    a = analyse(read_rows(run_dir))
    if a is None:
        return [f"{run_dir}: no rows"]
    def k(rate):
        return f"{rate / 1000:.0f}k"

    lines = [
        f"{run_dir}: {a['deliveries']} deliveries on {a['connections']} connections",
        f"  latency ms: mean {a['mean']:.2f}, p50 {a['p50']:.2f}, p90 {a['p90']:.2f}, "
        f"p99 {a['p99']:.2f}, p99.9 {a['p999']:.2f}",
        f"  each connection's mean latency ms: min {a['conn_mean_min']:.2f}, "
        f"median {a['conn_mean_median']:.2f}, max {a['conn_mean_max']:.2f}",
    ]
    for width, s in a["slots"].items():
        stalls = ", ".join(f"{at:.0f} ms ({k(rate)}/s)" for at, rate in s["stalls"][:8])
        more = f" and {len(s['stalls']) - 8} more" if len(s["stalls"]) > 8 else ""
        lines.append(
            f"  {width} ms slots: deliveries/s min {k(s['rate_min'])}, p10 {k(s['rate_p10'])}, "
            f"median {k(s['rate_median'])}, max {k(s['rate_max'])}; p99 with each slot's mean "
            f"taken out {s['steady_p99']:.2f} ms; under half the median: {stalls or 'none'}{more}")
    return lines


def run_dirs(path):
    """A run's directory, or every run's under a --trace directory."""
    path = Path(path)
    if not path.is_dir():
        return []
    if any(path.glob("*.trace")):
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and any(p.glob("*.trace")))
