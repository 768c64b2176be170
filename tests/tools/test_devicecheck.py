"""The device check (`make device-check`) runs here on the CPU: the same command a GPU machine runs."""

from __future__ import annotations

from bench import devicecheck


def test_the_device_check_serves_concurrent_gpt_oss_streams_in_one_batch(tmp_path):
    rows = devicecheck.main(["--device", "cpu", "--streams", "4", "--tokens", "16", "--models", "gpt-oss",
                             "--out", str(tmp_path / "figures.json")])
    (row,) = rows
    assert row["model"] == "gpt-oss" and row["streams"] == 4
    assert row["max_active"] > 1  # the health answer saw rows decoding together
    assert row["same_answers"]  # greedy answers together equal their one-at-a-time answers
    assert row["tokens"] > 0 and row["generate_one_tps"] > 0 and row["generate_batch_tps"] > 0
    assert (tmp_path / "figures.json").read_text().count('"streams": 4') == 1
