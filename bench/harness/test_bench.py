"""Unit tests for the harness's own logic (no servers): python3 -m unittest discover bench/harness"""

import json
import tempfile
import unittest
from pathlib import Path

import bench


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


if __name__ == "__main__":
    unittest.main()
