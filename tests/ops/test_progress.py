"""Long stages say how far they got at least every few seconds, even when one batch is slow."""

import time

import pytest

from deepfeed.core.data.clean_pipeline import AuditSpool, clean_sources
from deepfeed.core.data.cleaning import CorpusCleaner
from deepfeed.core.platform.progress import Every
from tests.core.test_clean_pipeline import CONFIG, HashEncoder, _write_sources, corpus


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_every_reports_on_count_or_clock_whichever_first():
    clock = Clock()
    every = Every(3, seconds=10, clock=clock)
    assert [every.due() for _ in range(6)] == [False, False, True, False, False, True]
    clock.now = 9.9
    assert not every.due()
    clock.now = 10.0
    assert every.due()  # one event since, but 10 s of silence
    assert not every.due_by_clock()
    clock.now = 20.0
    assert every.due_by_clock() and not every.due()  # the clock report reset the count
    assert [Every(None, seconds=None, clock=clock).due() for _ in range(100)] == [False] * 100
    with pytest.raises(ValueError, match="n must be at least 1"):
        Every(0)


class SlowEncoder(HashEncoder):
    """Encoding that takes a while per batch, as MiniLM does on a busy machine."""

    def encode(self, texts):
        time.sleep(0.6)
        return super().encode(texts)


def _clean(tmp_path, name, progress_seconds):
    lines = []
    started = time.monotonic()
    clean_sources(
        _write_sources(tmp_path / name, corpus()),
        tmp_path / name / "out",
        CorpusCleaner(CONFIG, "run-1"),
        audit_spool=AuditSpool(tmp_path / name / "spool.jsonl"),
        dp_epsilon=0.5,
        dp_rng=11,
        encoder=SlowEncoder(),
        progress=lambda p: lines.append((time.monotonic() - started, p)),
        progress_every=10**6,  # never by count: only the clock can make lines here
        progress_seconds=progress_seconds,
    )
    return lines


def test_a_slow_clean_pass_reports_while_a_batch_is_still_encoding(tmp_path):
    lines = _clean(tmp_path, "timed", progress_seconds=0.25)
    clean = [(t, p) for t, p in lines if p.phase == "clean"]
    # 8 batches of 32 records at >= 0.6 s each: lines come from inside the batches, not only
    # between them (which could not be closer than 0.6 s apart).
    assert len(clean) >= 8
    gaps = [b[0] - a[0] for a, b in zip(clean, clean[1:])]
    assert min(gaps) < 0.6 and max(gaps) < 2.0, gaps
    assert clean[-1][1].records == len(corpus())  # the closing line has every record read
    untimed = _clean(tmp_path, "untimed", progress_seconds=None)
    assert [p.phase for _, p in untimed] == ["clean", "write"]  # only the closing line of each pass
