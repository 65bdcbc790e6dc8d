"""Unit tests for the harness's own logic (no servers): python3 -m unittest discover bench/harness"""

import json
import tempfile
import unittest
from pathlib import Path

import bench
import timeline


def rpc_result(target, conns, per_s, p99_ms, rate=None):
    return {"target": target, "workload": "rpc", "received_per_s": per_s, "latency": {"p99_ms": p99_ms},
            "params": {"rpc": {"conns": conns}}, "sweep": {"conns": conns, "rate": rate}}


class RpcChart(unittest.TestCase):
    def test_a_fixed_rate_run_does_not_label_the_closed_loop_bar(self):
        results = [rpc_result("pubsub", 100, 212_800, 0.68),
                   rpc_result("pubsub", 100, 30_000, 2.23, rate=30_000)]
        with tempfile.TemporaryDirectory() as d:
            bench.charts(Path(d), "rpc", results)
            chart = (Path(d) / "rpc.svg").read_text()
        self.assertIn("p99 0.68", chart)
        self.assertNotIn("p99 2.23", chart)


class Merge(unittest.TestCase):
    def test_a_rerun_replaces_its_own_point_and_keeps_the_others(self):
        old = [rpc_result("sockudo", 100, 55_100, 3.6), rpc_result("pubsub", 100, 200_000, 0.7)]
        new = [rpc_result("pubsub", 100, 212_800, 0.68)]
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "rpc.json").write_text(json.dumps(old))
            merged = bench.save(Path(d), "rpc", new, fresh=False)
        self.assertEqual(sorted((r["target"], r["received_per_s"]) for r in merged),
                         [("pubsub", 212_800), ("sockudo", 55_100)])


class Verdicts(unittest.TestCase):
    def floor_line(self, ours_per_s, floor_per_s):
        rpc = [rpc_result("pubsub", 100, ours_per_s, 0.6), rpc_result("echo", 100, floor_per_s, 0.55)]
        report = bench.targets_report({"rpc": rpc})
        return next(line for line in report.splitlines() if "bare echo floor" in line)

    def test_a_ratio_just_under_its_goal_is_not_rounded_onto_it(self):
        line = self.floor_line(233_629, 260_050)
        self.assertIn("0.898×", line)
        self.assertIn("**missed**", line)

    def test_a_ratio_clear_of_its_goal_keeps_two_decimals(self):
        line = self.floor_line(240_000, 260_000)
        self.assertIn("0.92×", line)
        self.assertIn("**met**", line)


class HostLines(unittest.TestCase):
    def test_the_steadiness_gauge_shows_each_cores_range_and_longest_gap(self):
        base = {"cpu": "AMD EPYC", "cpu_family_model": "25/17", "vcpus": 2, "virtualized": True,
                "kernel": "6.18", "mitigations": {}}
        hosts = [dict(base, away_ms_per_s=[3.84, 16.59], away_longest_ms=[0.98, 6.14]),
                 dict(base, away_ms_per_s=[13.89, 9.63], away_longest_ms=[5.15, 2.09]),
                 dict(base)]
        [line] = bench.host_lines(hosts)
        self.assertIn("the server's core taken away 3.8–13.9 ms a second (at most 5.2 ms at once)", line)
        self.assertIn("the generator's core taken away 9.6–16.6 ms a second (at most 6.1 ms at once)", line)


def closed_loop_rows(conns=100, latency_us=10_000, seconds=1.0, stall=None, slow=None):
    """Rows of a closed loop: each connection answered every latency_us,
    turns staggered; `stall` = (start_us, end_us) in which nothing is read
    (reads due then happen at its end, late by what they waited);
    `slow` = a connection whose every answer takes 5 times as long."""
    rows = []
    for c in range(conns):
        lat = latency_us * (5 if c == slow else 1)
        at = latency_us + c * latency_us // conns
        while at < seconds * 1e6:
            read, waited = at, lat
            if stall and stall[0] <= at < stall[1]:
                read, waited = stall[1], lat + stall[1] - at
            rows.append((int(read), int(waited), str(c)))
            at += lat
    rows.sort()
    return rows


class LatencyOverTime(unittest.TestCase):
    def test_a_steady_fair_loop_has_equal_connections_and_no_stalls(self):
        a = timeline.analyse(closed_loop_rows())
        self.assertAlmostEqual(a["conn_mean_min"], a["conn_mean_max"])
        self.assertEqual(a["p99"], 10.0)
        for slots in a["slots"].values():
            self.assertEqual(slots["stalls"], [])
            self.assertAlmostEqual(slots["rate_min"], slots["rate_max"], delta=0.02 * slots["rate_max"])

    def test_a_stall_shows_as_slots_without_deliveries_not_as_an_unfair_connection(self):
        a = timeline.analyse(closed_loop_rows(stall=(500_000, 530_000)))
        self.assertGreater(a["p99"], 30)
        stalled = [at for at, rate in a["slots"][10]["stalls"]]
        self.assertTrue(any(480 <= at <= 530 for at in stalled), stalled)
        self.assertLess(a["conn_mean_max"] / a["conn_mean_min"], 1.1)
        # Each slot's own mean taken out, the stall's latency is gone.
        self.assertLess(a["slots"][10]["steady_p99"], a["p99"])

    def test_a_slow_connection_shows_in_the_spread_of_connection_means(self):
        a = timeline.analyse(closed_loop_rows(slow=7))
        self.assertAlmostEqual(a["conn_mean_max"] / a["conn_mean_min"], 5.0, places=1)

    def test_rows_are_read_as_the_generator_writes_them(self):
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "41.trace").write_text("1000 250 7\n900 300 8\n")
            (Path(d) / "42.trace").write_text("950 100 7\n")
            self.assertEqual(timeline.run_dirs(d), [Path(d)])
            self.assertEqual(timeline.run_dirs(Path(d) / "absent"), [])
            rows = timeline.read_rows(d)
        # Sorted by time; the same descriptor in two processes is two connections.
        self.assertEqual(rows, [(900, 300, "41:8"), (950, 100, "42:7"), (1000, 250, "41:7")])


if __name__ == "__main__":
    unittest.main()
