from __future__ import annotations

import json
import threading

from fastapi.testclient import TestClient

from deepfeed.core.loop.abtest import assign_arm, hash_user_id
from deepfeed.core.loop.feedback import FeedbackStore
from deepfeed.core.loop.inference_log import InferenceLog
from deepfeed.core.platform.audit import AuditLedger
from deepfeed.serve.app import ServeSettings, create_app
from tests.serve.conftest import KEYS, SALT, write_policy


def make_client(home, registry, policy_file=None, key=KEYS["client"], **kw) -> TestClient:
    """A client of the real app; its requests carry `key` (the `client` role may generate)."""
    policy_file = policy_file or write_policy(home / "access_policy.json")
    settings = ServeSettings(
        tracking_uri=registry.uri,
        runtime="torch",
        max_new_tokens=4,
        poll_seconds=0,
        policy_path=policy_file,
        home=home,
        **{"rate_burst": 10_000, **kw},
    )
    return TestClient(create_app(settings), headers={"X-API-Key": key} if key else {})


def test_generate_logs_scrubbed_request(deepfeed_env, registry, tiny_llama):
    registry.register(tiny_llama, "champion")
    with make_client(deepfeed_env, registry) as client:
        r = client.post("/generate", json={"user_id": "alice", "prompt": "Email bob@example.com about hypertension"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["arm"] == "champion" and body["model_version"] == "1"
        assert 0 < body["confidence"] <= 1
    events = list(InferenceLog(deepfeed_env / "inference_log").events())
    assert len(events) == 1
    e = events[0]
    assert e["request_id"] == body["request_id"] and e["model_version"] == "1" and e["runtime"] == "torch"
    assert e["user_hash"] == hash_user_id("alice", SALT) and e["confidence"] == body["confidence"]
    assert e["features"]["length_chars"] > 10 and e["latency_ms"] > 0
    assert {f"embedding_{i}" for i in range(8)} <= set(e["features"])  # the MiniLM embedding summary
    raw = json.dumps(events)
    assert "bob@example.com" not in raw and "alice" not in raw and "<EMAIL>" in e["prompt"]
    assert e["pii_found"] == {"EMAIL": 1}


def test_ab_arms_are_sticky_and_follow_the_hash(deepfeed_env, registry, tiny_llama):
    registry.register(tiny_llama, "champion")
    registry.register(tiny_llama, "challenger")
    with make_client(deepfeed_env, registry, split=0.5) as client:
        seen = {}
        for i in range(16):
            user = f"user-{i}"
            arms = {
                client.post("/generate", json={"user_id": user, "prompt": "hi", "max_new_tokens": 1}).json()["arm"]
                for _ in range(2)
            }
            assert len(arms) == 1  # sticky
            seen[user] = arms.pop()
            assert seen[user] == assign_arm(user, 0.5, SALT)
        assert set(seen.values()) == {"champion", "challenger"}
        versions = {
            client.post("/generate", json={"user_id": u, "prompt": "hi", "max_new_tokens": 1}).json()["model_version"]
            for u in seen
        }
        assert versions == {"1", "2"}


def test_alias_move_reloads_without_dropping_requests(deepfeed_env, registry, tiny_llama, policy_file):
    registry.register(tiny_llama, "champion")
    v2 = registry.register(tiny_llama)
    with make_client(deepfeed_env, registry, policy_file, ab_test=False) as client:
        statuses, versions = [], []

        def traffic():
            for i in range(6):
                r = client.post("/generate", json={"user_id": f"u{i}", "prompt": "hello", "max_new_tokens": 2})
                statuses.append(r.status_code)
                versions.append(r.json().get("model_version"))

        threads = [threading.Thread(target=traffic) for _ in range(3)]
        for t in threads:
            t.start()
        registry.set_alias("champion", v2)
        r = client.post("/admin/reload", headers={"X-API-Key": KEYS["operator"]})
        for t in threads:
            t.join()
        assert r.status_code == 200 and r.json()["versions"] == {"champion": v2}
        assert statuses == [200] * 18 and set(versions) <= {"1", v2}
        assert client.post("/generate", json={"user_id": "x", "prompt": "hi"}).json()["model_version"] == v2
        assert client.get("/health").json()["reloads"] >= 2
        # Reloading is an operator's right, not an annotator's.
        assert client.post("/admin/reload", headers={"X-API-Key": KEYS["annotator"]}).status_code == 403


def test_feedback_rbac_abac_and_audit(deepfeed_env, registry, tiny_llama, policy_file):
    registry.register(tiny_llama, "champion")
    good = {
        "prompt": "What is hypertension?",
        "answer": "high blood pressure",
        "rating": 1,
        "user_id": "alice",
        "classification": "internal",
    }
    with make_client(deepfeed_env, registry, policy_file) as client:
        r = client.post("/feedback", json=good, headers={"X-API-Key": KEYS["annotator"]})
        assert r.status_code == 200, r.text
        denied = [
            (None, good, "unknown or missing API key"),
            ("wrong-key", good, "unknown or missing API key"),
            (KEYS["viewer"], good, "lacks permission"),
            (KEYS["operator"], good, "may not submit 'internal'"),
            (KEYS["annotator"], {**good, "classification": "restricted"}, "may not submit 'restricted'"),
        ]
        for key, body, reason in denied:
            headers = {"X-API-Key": key} if key else {"X-API-Key": ""}
            r = client.post("/feedback", json=body, headers=headers)
            assert r.status_code in (401, 403) and reason in r.json()["detail"], (key, r.text)
        # Two refusals without a valid key (401), three of known keys lacking the right (403).
        assert client.get("/health").json()["rejected"] == {"unauthenticated": 2, "forbidden": 3}
    store = FeedbackStore(deepfeed_env / "feedback")
    assert store.pending() == 1
    batch = store.seal_batch()
    [record] = store.raw_records(batch)
    assert record["role"] == "annotator"
    assert record["user_hash"] == hash_user_id("alice", SALT)
    # Refusals are counted, not written one by one (a flood of them once grew the ledger
    # by ~1 KB each): the ledger gets one summary entry when the server stops.
    ledger = AuditLedger(deepfeed_env / "audit" / "ledger.jsonl")
    assert list(ledger.iter_entries(action="access_denied")) == []
    [summary] = list(ledger.iter_entries(action="requests_rejected"))
    assert summary["extra"]["counts"] == {"unauthenticated": 2, "forbidden": 3}
    assert "key-" not in json.dumps(summary)
    assert ledger.verify().ok


MALFORMED = [
    ("/generate", {"prompt": "hi"}, "user_id"),
    ("/generate", {"user_id": "u", "prompt": ""}, "prompt"),
    ("/generate", {"user_id": "u", "prompt": "hi", "max_new_tokens": "many"}, "max_new_tokens"),
    ("/generate", [1, 2], "body"),
    ("/feedback", {"prompt": "q", "answer": "a", "rating": 3, "classification": "public"}, "rating"),
    ("/feedback", {"prompt": "q", "rating": 1, "classification": "public"}, "answer"),
]


def test_malformed_requests_get_a_clear_4xx(deepfeed_env, registry, tiny_llama, policy_file):
    registry.register(tiny_llama, "champion")
    with make_client(deepfeed_env, registry, policy_file) as client:
        for path, payload, needle in MALFORMED:
            key = KEYS["client"] if path == "/generate" else KEYS["annotator"]
            r = client.post(path, json=payload, headers={"X-API-Key": key})
            assert 400 <= r.status_code < 500 and needle in r.json()["detail"], r.text
            r = client.post(
                path, content=b"{not json", headers={"Content-Type": "application/json", "X-API-Key": KEYS["client"]}
            )
            assert r.status_code == 422 and "JSON" in r.json()["detail"]
    assert FeedbackStore(deepfeed_env / "feedback").pending() == 0
    assert InferenceLog(deepfeed_env / "inference_log").count() == 0


def test_no_champion_is_503_not_500(deepfeed_env, registry):
    with make_client(deepfeed_env, registry) as client:
        r = client.post("/generate", json={"user_id": "u", "prompt": "hi"})
        assert r.status_code == 503 and "champion" in r.json()["detail"]


def test_without_a_policy_every_keyed_endpoint_refuses(deepfeed_env, registry, tiny_llama):
    registry.register(tiny_llama, "champion")
    settings = ServeSettings(tracking_uri=registry.uri, runtime="torch", poll_seconds=0, home=deepfeed_env)
    with TestClient(create_app(settings)) as client:
        for path, body in (
            ("/generate", {"user_id": "u", "prompt": "hi"}),
            ("/feedback", {"prompt": "q", "answer": "a", "rating": 1, "classification": "public"}),
        ):
            r = client.post(path, json=body, headers={"X-API-Key": "k"})
            assert r.status_code == 401 and r.json()["detail"].endswith("no access policy configured on this server")
