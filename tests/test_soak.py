"""The soak, short: 240 requests from 24 loopback client addresses against a server process (`make soak`: 2,000 from 200)."""

from __future__ import annotations

from soak.run import run_load


def test_short_soak_loses_nothing_and_keeps_every_promise():
    report = run_load(requests=240, clients=24, seed=7, max_seconds=90)
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
