import pytest

from deepfeed.core.train.incremental import plan_replay, records_hash, training_state_dir


def rec(i, prefix="old"):
    return {"record_id": f"{prefix}{i}", "kind": "pair", "prompt": f"q{i}", "response": f"a{i}", "text": None}


def test_replay_mixes_earlier_records_and_keeps_the_eval_sample_disjoint():
    feedback, earlier = [rec(i, "fb") for i in range(10)], [rec(i) for i in range(40)]
    plan = plan_replay(feedback, earlier, replay_ratio=0.5, eval_samples=8, seed=3)
    assert plan.feedback == 10 and plan.replayed == 5 and len(plan.train) == 15
    assert plan.train[:10] == feedback
    ids_train = {r["record_id"] for r in plan.train}
    ids_eval = {r["record_id"] for r in plan.replay_eval}
    assert len(ids_eval) == 8 and not ids_train & ids_eval
    assert plan_replay(feedback, earlier, 0.5, 8, seed=3) == plan  # seeded
    short = plan_replay(feedback, earlier[:10], replay_ratio=2.0, eval_samples=8, seed=3)
    assert short.replayed == 2  # only what is left after the eval sample
    with pytest.raises(ValueError, match="replay_ratio"):
        plan_replay(feedback, earlier, -1, 8, 0)


def test_records_hash_follows_the_training_fields_only(tmp_path):
    base = [rec(1), rec(2)]
    assert records_hash(base) == records_hash([{**r, "meta": "ignored"} for r in base])
    assert records_hash(base) != records_hash([rec(1), {**rec(2), "response": "changed"}])
    assert records_hash(base) != records_hash(base[::-1])
    assert (
        training_state_dir(tmp_path, "incremental_model", "000001-2026/x")
        == tmp_path / "training_state" / "incremental_model" / "000001-2026_x"
    )
