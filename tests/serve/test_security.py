"""The server as a stranger meets it: keys, body caps, token limits, rate limits, refusals
counted rather than ledgered, feedback that cannot name its own arm, user ids that cannot be
recovered from the log without the salt."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import pytest
from fastapi.testclient import TestClient

from deepfeed.core.loop.abtest import hash_user_id
from deepfeed.core.loop.feedback import FeedbackStore
from deepfeed.core.loop.inference_log import InferenceLog
from deepfeed.core.platform.audit import AuditLedger
from deepfeed.core.platform.secrets import MissingSecret
from deepfeed.serve.app import ServeSettings, create_app
from tests.serve.conftest import KEYS, SALT, write_policy

ASK = {"user_id": "u1", "prompt": "hello"}


def _settings(home, registry, **kw) -> ServeSettings:
    kw.setdefault("policy_path", write_policy(home / "access_policy.json"))
    return ServeSettings(
        tracking_uri=registry.uri,
        runtime="torch",
        max_new_tokens=2,
        poll_seconds=0,
        home=home,
        embedding_summary=False,
        **kw,
    )


def _ledger(home) -> AuditLedger:
    return AuditLedger(home / "audit" / "ledger.jsonl")


def test_generate_needs_a_key_with_the_generate_permission(deepfeed_env, registry, tiny_llama):
    registry.register(tiny_llama, "champion")
    with TestClient(create_app(_settings(deepfeed_env, registry))) as client:
        assert client.post("/generate", json=ASK).status_code == 401
        assert client.post("/generate", json=ASK, headers={"X-API-Key": "guess"}).status_code == 401
        r = client.post("/generate", json=ASK, headers={"X-API-Key": KEYS["annotator"]})
        assert r.status_code == 403 and "model:generate" in r.json()["detail"]
        assert client.post("/generate", json=ASK, headers={"X-API-Key": KEYS["client"]}).status_code == 200
    assert InferenceLog(deepfeed_env / "inference_log").count() == 1


def test_anonymous_generate_only_when_the_policy_switches_it_on(deepfeed_env, registry, tiny_llama):
    registry.register(tiny_llama, "champion")
    policy = write_policy(deepfeed_env / "open_policy.json", anonymous=["model:generate"])
    with TestClient(create_app(_settings(deepfeed_env, registry, policy_path=policy))) as client:
        assert client.post("/generate", json=ASK).status_code == 200
        # A wrong key is still wrong: anonymity is for callers without one.
        assert client.post("/generate", json=ASK, headers={"X-API-Key": "guess"}).status_code == 401
        # Anonymous generation does not open anything else.
        fb = {"prompt": "q", "answer": "a", "rating": 1, "classification": "public"}
        assert client.post("/feedback", json=fb).status_code == 401


def _asgi_post(app, path: str, headers: dict[str, str], chunks, limit_chunks: int = 10_000):
    """Drive the ASGI app directly, counting how many body chunks it pulled."""
    pulled = {"n": 0}
    sent = []
    chunks = iter(chunks)

    async def receive():
        pulled["n"] += 1
        if pulled["n"] > limit_chunks:
            raise AssertionError("the server kept reading a body it should have refused")
        chunk = next(chunks, None)
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), pulled["n"]


def test_oversized_bodies_are_refused_before_they_are_read(deepfeed_env, registry):
    app = create_app(_settings(deepfeed_env, registry, max_body_bytes=4096))
    key = {"X-API-Key": KEYS["client"], "Content-Type": "application/json"}
    # Declared: 100 MB announced, refused before the first byte is pulled.
    status, body, pulled = _asgi_post(
        app, "/generate", {**key, "Content-Length": str(100 << 20)}, (b"x" * 65536 for _ in range(1600))
    )
    assert status == 413 and "4096 bytes" in body["detail"] and pulled == 0
    # Undeclared (chunked): refused at the first chunk past the cap, the rest never read.
    status, body, pulled = _asgi_post(app, "/generate", key, (b" " * 1024 for _ in range(100_000)), limit_chunks=10)
    assert status == 413 and pulled == 5
    assert app.state.rejections.snapshot() == {"body_too_large": 2}
    # Within the cap the same route answers normally (here: a validation error, no model needed).
    status, body, _ = _asgi_post(app, "/generate", key, [b'{"user_id": "u"}'])
    assert status == 422 and "prompt" in body["detail"]


def test_prompt_and_token_limits(deepfeed_env, registry, tiny_llama):
    registry.register(tiny_llama, "champion")
    settings = _settings(deepfeed_env, registry, max_prompt_chars=50, max_new_tokens_limit=8)
    with TestClient(create_app(settings), headers={"X-API-Key": KEYS["client"]}) as client:
        r = client.post("/generate", json={"user_id": "u", "prompt": "x" * 51})
        assert r.status_code == 422 and "50 characters" in r.json()["detail"]
        r = client.post("/generate", json={"user_id": "u", "prompt": "hi", "max_new_tokens": 9})
        assert r.status_code == 422 and "at most 8" in r.json()["detail"]
        assert client.post("/generate", json={"user_id": "u", "prompt": "hi", "max_new_tokens": 8}).status_code == 200
    assert InferenceLog(deepfeed_env / "inference_log").count() == 1


def test_rate_limit_per_key_and_refusals_are_counted_not_ledgered(deepfeed_env, registry, tiny_llama):
    registry.register(tiny_llama, "champion")
    settings = _settings(deepfeed_env, registry, rate_per_second=0.001, rate_burst=3)
    with TestClient(create_app(settings)) as client:
        codes = [
            client.post("/generate", json={**ASK, "max_new_tokens": 1}, headers={"X-API-Key": KEYS["client"]})
            for _ in range(5)
        ]
        assert [r.status_code for r in codes] == [200, 200, 200, 429, 429]
        assert int(codes[-1].headers["Retry-After"]) >= 1
        # Another key has its own bucket.
        fb = {"prompt": "q", "answer": "a", "rating": 1, "classification": "public"}
        assert client.post("/feedback", json=fb, headers={"X-API-Key": KEYS["annotator"]}).status_code == 200
        for _ in range(50):  # a flood of strangers
            client.post("/generate", json=ASK, headers={"X-API-Key": "guess"})
        assert client.get("/health").json()["rejected"] == {"rate_limited": 2, "unauthenticated": 50}
        assert _ledger(deepfeed_env).path.exists() is False  # nothing written per refusal
    [summary] = list(_ledger(deepfeed_env).iter_entries())
    assert summary["action"] == "requests_rejected"
    assert summary["extra"]["counts"] == {"rate_limited": 2, "unauthenticated": 50}


def test_feedback_arm_and_version_come_from_the_servers_log(deepfeed_env, registry, tiny_llama):
    registry.register(tiny_llama, "champion")
    registry.register(tiny_llama, "challenger")
    with TestClient(create_app(_settings(deepfeed_env, registry))) as client:
        answer = client.post(
            "/generate",
            json={"user_id": "u7", "prompt": "hi", "max_new_tokens": 1},
            headers={"X-API-Key": KEYS["client"]},
        ).json()
        other_arm = "champion" if answer["arm"] == "challenger" else "challenger"
        base = {"prompt": "hi", "answer": "a", "rating": 1.0, "classification": "public"}
        annotator = {"X-API-Key": KEYS["annotator"]}
        # The client may not say which arm or version it rated.
        for forged in ({"arm": other_arm}, {"model_version": "99"}):
            r = client.post("/feedback", json={**base, "request_id": answer["request_id"], **forged}, headers=annotator)
            assert r.status_code == 422 and "assigned by the server" in r.json()["detail"]
        r = client.post("/feedback", json={**base, "request_id": "0" * 32}, headers=annotator)
        assert r.status_code == 422 and "no request" in r.json()["detail"]
        r = client.post("/feedback", json={**base, "request_id": answer["request_id"]}, headers=annotator)
        assert r.status_code == 200, r.text
    # A fresh app (another worker, a restart) finds the request in the inference log.
    with TestClient(create_app(_settings(deepfeed_env, registry))) as client:
        r = client.post("/feedback", json={**base, "request_id": answer["request_id"]}, headers=annotator)
        assert r.status_code == 200
    stored = FeedbackStore(deepfeed_env / "feedback").all_records()
    assert len(stored) == 2
    for record in stored:
        assert (record["arm"], record["model_version"]) == (answer["arm"], answer["model_version"])
        assert record["user_hash"] == hash_user_id("u7", SALT) and record["request_id"] == answer["request_id"]


def test_feedback_tags_and_lang_cannot_carry_pii(deepfeed_env, registry):
    with TestClient(create_app(_settings(deepfeed_env, registry))) as client:
        annotator = {"X-API-Key": KEYS["annotator"]}
        base = {"prompt": "q", "answer": "a", "rating": 1.0, "classification": "public"}
        r = client.post(
            "/feedback",
            json={**base, "tags": ["billing", "call jane.doe@example.com", "ip 10.1.2.3"], "lang": "zh-CN"},
            headers=annotator,
        )
        assert r.status_code == 200, r.text
        r = client.post("/feedback", json={**base, "lang": "mail jane.doe@example.com"}, headers=annotator)
        assert r.status_code == 422 and "language tag" in r.json()["detail"] and "jane" not in r.text
    store = FeedbackStore(deepfeed_env / "feedback")
    batch = store.seal_batch()
    raw = json.dumps(store.raw_records(batch)) + json.dumps(store.read_batch(batch))
    assert "jane.doe@example.com" not in raw and "10.1.2.3" not in raw
    [pair] = store.read_batch(batch)
    assert pair["tags"][0] == "billing" and "<EMAIL>" in pair["tags"][1] and pair["lang"] == "zh-CN"


def test_a_phone_number_user_id_cannot_be_recovered_without_the_salt(deepfeed_env, registry, tiny_llama):
    registry.register(tiny_llama, "champion")
    phone = "13812345678"
    with TestClient(create_app(_settings(deepfeed_env, registry))) as client:
        assert (
            client.post(
                "/generate",
                json={"user_id": phone, "prompt": "hi", "max_new_tokens": 1},
                headers={"X-API-Key": KEYS["client"]},
            ).status_code
            == 200
        )
    [event] = InferenceLog(deepfeed_env / "inference_log").events()
    assert phone not in json.dumps(event)
    # The attack that recovered such ids: hash every candidate number, unkeyed or with an
    # empty key, and look the logged hash up. 100k candidates around the real number.
    candidates = [f"138123{n:05d}" for n in range(100_000)]
    for guess in (
        lambda c: hmac.new(b"", c.encode(), hashlib.sha256).hexdigest(),
        lambda c: hashlib.sha256(c.encode()).hexdigest(),
    ):
        assert event["user_hash"] not in {guess(c) for c in candidates}
    # With the key the operator holds, the id is still a stable join key.
    assert event["user_hash"] == hash_user_id(phone, SALT)


def test_server_refuses_to_start_without_a_salt(deepfeed_env, registry, monkeypatch, tmp_path):
    monkeypatch.delenv("DEEPFEED_USER_SALT")
    with pytest.raises(MissingSecret, match="DEEPFEED_USER_SALT"):
        create_app(_settings(deepfeed_env, registry))
    # A salt file others can read is no secret.
    secret = tmp_path / "salt"
    secret.write_text("s" * 32)
    secret.chmod(0o644)
    monkeypatch.setenv("DEEPFEED_USER_SALT_FILE", str(secret))
    with pytest.raises(MissingSecret, match="chmod 600"):
        create_app(_settings(deepfeed_env, registry))
    secret.chmod(0o600)
    assert create_app(_settings(deepfeed_env, registry)) is not None


def test_deepfeed_serve_refuses_to_start_without_a_salt(deepfeed_env, monkeypatch, capsys):
    from deepfeed.cli import main

    monkeypatch.delenv("DEEPFEED_USER_SALT")
    assert main(["serve", "--port", "1"]) == 2  # returns before uvicorn would bind anything
    assert "refusing to start" in capsys.readouterr().err
