from __future__ import annotations

import datetime as dt

from deepfeed.core.loop.inference_log import InferenceLog, feature_columns, prompt_record

UTC = dt.timezone.utc


def test_hour_partitions_and_windows(tmp_path):
    log = InferenceLog(tmp_path)
    t0 = dt.datetime(2026, 11, 29, 10, 59, 59, tzinfo=UTC)
    for i in range(5):
        log.append({"time": (t0 + dt.timedelta(minutes=30 * i)).isoformat(), "i": i, **prompt_record(f"prompt {i}")})
    assert [p.relative_to(tmp_path).as_posix() for p in log.hour_files()] == [
        "2026-11-29/10.jsonl",
        "2026-11-29/11.jsonl",
        "2026-11-29/12.jsonl",
    ]
    window = [e["i"] for e in log.events(since=t0 + dt.timedelta(minutes=1), until=t0 + dt.timedelta(minutes=91))]
    assert window == [1, 2, 3]
    assert log.count() == 5
    cols = feature_columns(log.events())
    assert len(cols["length_chars"]) == 5 and cols["length_chars"][0] == len("prompt 0")


def test_prompt_record_scrubs_pii():
    rec = prompt_record("我的电话是13812345678，请回电")
    assert "13812345678" not in rec["prompt"] and rec["pii_found"] == {"PHONE": 1}
    assert rec["lang"] == "zh" and rec["features"]["cjk_share"] > 0.3


def test_partial_last_line_is_not_read(tmp_path):
    log = InferenceLog(tmp_path)
    now = dt.datetime.now(UTC)
    log.append({"time": now.isoformat(), "ok": True})
    with open(log.path_for(now), "ab") as f:
        f.write(b'{"time": "2026')
    assert log.count() == 1


def test_append_scrubs_every_free_text_value_not_only_the_prompt(tmp_path):
    log = InferenceLog(tmp_path)
    log.append(
        {
            "time": "2024-05-01T10:00:00+00:00",
            "request_id": "a" * 32,
            "arm": "champion",
            "model_version": "3",
            "answer": "write to jane.doe@example.com",
            "notes": ["ip 10.1.2.3"],
            "extra": {"comment": "call 13812345678"},
            "runtime": "torch 13812345678 jane.doe@example.com",
        }
    )
    raw = (tmp_path / "2024-05-01" / "10.jsonl").read_text()
    for pii in ("jane.doe@example.com", "10.1.2.3", "13812345678"):
        assert pii not in raw
    [event] = log.events()
    assert event["arm"] == "champion" and event["model_version"] == "3" and event["request_id"] == "a" * 32


def test_find_a_request_by_id(tmp_path):
    log = InferenceLog(tmp_path)
    now = dt.datetime.now(dt.timezone.utc)
    for i, hours_ago in enumerate((200, 5, 0)):
        log.append(
            {"time": (now - dt.timedelta(hours=hours_ago)).isoformat(), "request_id": f"{i:032x}", "arm": "challenger"}
        )
    assert log.find(f"{1:032x}")["arm"] == "challenger"
    assert log.find(f"{0:032x}") is None  # older than the 7-day window
    assert log.find(f"{0:032x}", within=dt.timedelta(days=9)) is not None
    assert log.find("f" * 32) is None
