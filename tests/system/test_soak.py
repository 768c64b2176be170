"""The soak, short: 240 requests from 40 loopback client addresses against a server process (`make soak`: 2,000 from 200)."""

from __future__ import annotations

from soak.run import run_load


def test_short_soak_loses_nothing_and_keeps_every_promise():
    # Tighter than `make soak` so it fits the suite: 10 starts/s 100 ms apart, shorter fault limits.
    quick = {"rate_limit_per_second": 10, "rate_limit_min_interval_ms": 100, "request_timeout_s": 1.0,
             "body_read_timeout_s": 0.6}
    report = run_load(requests=240, clients=40, seed=7, max_seconds=90, settings=quick)
    assert report["problems"] == [], "\n".join(report["problems"][:40])
    assert report["requests"] == 240 and report["unexpected_5xx"] == 0
    faults = report["faults_injected"]
    assert all(faults.values()), faults  # every kind of fault happened at least once
    backend = report["backend"]
    assert backend["running"] == 0 and backend["started"] == backend["finished"] + backend["cancelled"] + backend["failed"]
    assert report["tasks"]["after"] <= report["tasks"]["before"]
    assert report["threads"]["after"] == report["threads"]["before"] == ["MainThread"]
    assert report["rss_mib"]["after"] - report["rss_mib"]["before"] < 25
    assert report["gate_clients_after_idle"] == 0 and report["sigterm_exit_s"] < 5
