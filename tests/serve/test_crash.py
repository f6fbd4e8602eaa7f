"""Write before acknowledging: SIGKILL the server right after acks, lose none of them."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from deepfeed.core.loop.feedback import FeedbackStore
from deepfeed.serve.app import ServeSettings
from deepfeed.serve.process import ServerProcess
from tests.serve.conftest import KEYS


def test_killed_server_loses_no_acknowledged_feedback(deepfeed_env, registry, policy_file):
    settings = ServeSettings(
        tracking_uri=registry.uri, poll_seconds=0, policy_path=policy_file, home=deepfeed_env, rate_burst=10_000
    )
    server = ServerProcess(settings).start(wait_for_champion=False)
    acked: list[str] = []
    enough = threading.Event()
    try:

        def post(i: int) -> None:
            try:
                r = httpx.post(
                    f"{server.url}/feedback",
                    headers={"X-API-Key": KEYS["annotator"]},
                    timeout=30,
                    json={
                        "prompt": f"question {i}",
                        "answer": "a",
                        "rating": 1,
                        "user_id": f"u{i}",
                        "classification": "public",
                    },
                )
            except httpx.HTTPError:
                return  # the kill cut this one off: never acknowledged
            if r.status_code == 200:
                acked.append(r.json()["feedback_id"])
                if len(acked) >= 60:
                    enough.set()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(post, range(40)))
            # A second wave is in flight when the process dies.
            pending = [pool.submit(post, i) for i in range(40, 120)]
            assert enough.wait(60)
            server.kill()
            for f in pending:
                f.result()
    finally:
        server.stop()
    stored = {r["feedback_id"] for r in FeedbackStore(deepfeed_env / "feedback").all_records()}
    assert len(acked) >= 60
    assert set(acked) <= stored  # every acknowledged record survived the crash
    assert len(stored) <= 120
