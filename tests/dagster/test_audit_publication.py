"""clean_corpus killed right after publishing: the version must not stay without its audit
entries while `verify` says OK; the next run's start appends them."""

import dagster as dg
import pytest

from deepfeed.core.platform.artifacts import ArtifactStore
from deepfeed.core.platform.audit import AuditLedger, PublicationSpool
from tests.dagster.test_chain import materialize

FAST = {"coverage_embeddings": False}


@pytest.fixture
def instance(deepfeed_env):
    with dg.instance_for_test(temp_dir=str(deepfeed_env / "dagster")) as instance:
        yield instance


def test_crash_between_publication_and_ledger_is_detected_and_recovered(
    deepfeed_env, tiny_llama, tiny_corpus, instance, monkeypatch
):
    assert materialize(["raw_corpus"], deepfeed_env, tiny_llama, tiny_corpus, instance).success

    def killed(self, chunk=10_000):
        self._release(remove=False)  # what the kernel does to a killed process's lock
        raise RuntimeError("process killed after publishing")

    with monkeypatch.context() as m:
        m.setattr(PublicationSpool, "publish", killed)
        crashed = materialize(
            ["clean_corpus"],
            deepfeed_env,
            tiny_llama,
            tiny_corpus,
            instance,
            raise_on_error=False,
            clean_corpus={"config": FAST},
        )
    assert not crashed.success
    ledger = AuditLedger(deepfeed_env / "audit" / "ledger.jsonl")
    # clean_corpus retries once (COMPUTE_RETRY): the retry's start recovered the first attempt's
    # entries, then it published a second version and was "killed" the same way.
    first, second = ArtifactStore(deepfeed_env / "artifacts").versions("clean_corpus")  # published...
    result = ledger.verify()
    assert (result.ok, result.status) == (False, "unpublished_audit") and second in result.reason  # ...not audited
    recovered = list(ledger.iter_entries(run_id=crashed.run_id, action="published"))
    assert len(recovered) == 1 and recovered[0]["extra"]["recovered"] is True and first in str(recovered[0])

    again = materialize(
        ["clean_corpus"], deepfeed_env, tiny_llama, tiny_corpus, instance, clean_corpus={"config": FAST}
    )
    assert again.success
    assert ledger.verify().ok
    recovered = [e for e in ledger.iter_entries(run_id=crashed.run_id, action="published")]
    assert len(recovered) == 2 and all(e["extra"]["recovered"] is True for e in recovered)
    crashed_entries = [
        e for e in ledger.iter_entries(run_id=crashed.run_id) if e["action"] not in ("publishing", "published")
    ]
    fresh_entries = [
        e for e in ledger.iter_entries(run_id=again.run_id) if e["action"] not in ("publishing", "published")
    ]
    # The same corpus cleaned three times: each recovered attempt has the fresh run's entries.
    assert fresh_entries and len(crashed_entries) == 2 * len(fresh_entries)
