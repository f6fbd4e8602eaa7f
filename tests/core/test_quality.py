import random
import re

import numpy as np
import pytest

from deepfeed.core.data.quality.charclass import HAN, LATIN, PUNCT, SPACE, SYMBOL, TextBatch, char_class_counts
from deepfeed.core.data.quality.config import ALL_CHECKS, QualityConfig
from deepfeed.core.data.quality.detectors import (
    DETECTORS,
    _unit_repeats,
    check_quality,
    repeated_ngram_fraction,
    strip_boilerplate_lines,
    text_length,
)
from deepfeed.core.data.quality.language import detect_language, detect_languages
from deepfeed.core.data.quality.mojibake import fix_mojibake
from deepfeed.core.data.quality.normalize import normalize_text

CLEAN = [
    "The patient is a 67-year-old man with hypertension (I10) who presented with chest pain for two hours.",
    "Blood pressure was 142/91 mmHg, heart rate 88 bpm and temperature 37.2 °C on admission.",
    "Please contact <EMAIL> or call <PHONE> to reschedule the follow-up visit at the clinic.",
    "<NAME> (<ID_CN>, <BANK_CARD>) <ADDRESS> <IP>",  # a record that PII scrubbing emptied
    "Quarterly revenue grew by 8% on strong demand for cloud services in Europe and Asia.",
    "Is the new dosage schedule safe for elderly patients with reduced kidney function?",
    "患者男性，67岁，既往有高血压(I10)病史十年，因胸痛两小时入院。",
    "入院后完善心电图检查，提示急性下壁心肌梗死，立即行冠状动脉造影并植入支架一枚。",
    "本季度公司营业收入同比增长8%，主要得益于欧洲和亚洲市场对云服务的强劲需求。",
    "我们建议患者低盐饮食，规律服用降压药物，每周监测血压两次，并于一个月后复诊。",
    "Dr. Wang prescribed 5 mg amlodipine once daily; 患者表示理解并同意治疗方案。",
    "Step 1: open the settings page.\nStep 2: choose the data source and press Save.",
]

NOISE = {
    "encoding_debris": [
        "CafÃ© au lait and crÃ¨me brÃ»lÃ©e were served after the meeting.",
        "He said â€œhelloâ€ and left the room without another word.",
        "ä¸­æ–‡ characters decoded with the wrong code page look like this.",
        "The file was damaged \ufffd\ufffd and some characters were lost in transit.",
        "锟斤拷锟斤拷 烫烫烫 这是一段编码错误的中文文本内容示例。",
        "A control character \x07 sits in the middle of this otherwise normal sentence.",
        "A lone surrogate \ud800 is left over from a broken UTF-16 conversion here.",
    ],
    "length": ["ok", "好的", "   ", "", "x" * 100_001],
    "markup": [
        "<div class='note'>The patient was discharged home in good condition.</div>",
        "Dose adjusted&nbsp;to 10 mg after the review of renal function tests today.",
        "# Discharge summary\nThe patient was discharged home in good condition.",
        "See the [guideline](https://example.org/guide) for the full treatment algorithm.",
        "![chart](img/chart.png) Blood pressure trend over the last three months shown.",
        "This is **very important** for every patient with chronic kidney disease.",
        "| drug | dose |\n|---|---|\n| amlodipine | 5 mg |",
        "```python\nprint('hello world from the notebook cell output')\n```",
    ],
    "boilerplate": [
        "We use cookies to improve your experience. Click here to accept all cookies.",
        "Copyright © 2023 Example Health Inc. All rights reserved.",
        "Subscribe to our newsletter for weekly updates.\nTerms of Service | Privacy Policy",
        "版权所有 © 2023 某某医院 未经许可不得转载",
        "点击这里查看更多内容\n免责声明：本站内容仅供参考",
    ],
    "symbols": [
        "@@@ ### $$$ %%% ^^^ &&& *** +++ === ~~~ ||| <<< >>>",
        "=+=+=+ <<>> {{}} [[]] |||| ~~~~ ^^^^ @@@@ #### ****",
        "🙂🙂🙂 😀😀 🎉🎉🎉 great 🎉🎉🎉 party 🙂🙂🙂 tonight 😀😀😀",
    ],
    "digits": [
        "1234 5678 9012 3456 7890 1234 5678 9012",
        "2023-01-01 12:00:01 2023-01-01 12:00:02 2023-01-01 12:00:03",
        "电话 13800138000 13900139000 13700137000",
    ],
    "repetition": [
        "buy now buy now buy now buy now buy now buy now",
        "click the link click the link click the link click the link",
        "好好好好好好好好好好好好好好好好好好好好好好",
        "哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈",
        "Great product!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!! Highly recommended to everyone.",
        "hahahahahahahahahahahahahahahahahahahahahahaha that was so funny indeed",
        "免费领取免费领取免费领取免费领取免费领取免费领取免费领取",
    ],
}

_REASONS = {
    "encoding_debris": {"encoding_debris"},
    "length": {"too_short", "too_long"},
    "markup": {"markup"},
    "boilerplate": {"boilerplate"},
    "symbols": {"symbol_ratio"},
    "digits": {"digit_ratio"},
    "repetition": {"repetition"},
}


@pytest.mark.parametrize("name", ALL_CHECKS)
def test_each_detector_catches_its_noise_and_passes_clean_text(name):
    detector = DETECTORS[name]
    assert detector(CLEAN) == [None] * len(CLEAN)
    flagged = detector(NOISE[name])
    assert all(r in _REASONS[name] for r in flagged), list(zip(flagged, NOISE[name]))


def test_check_quality_reports_first_failing_reason():
    texts = CLEAN + [t for ts in NOISE.values() for t in ts]
    reasons = check_quality(texts)
    assert reasons[: len(CLEAN)] == [None] * len(CLEAN)
    assert all(r is not None for r in reasons[len(CLEAN) :])
    assert check_quality(["ok", "x"], QualityConfig(checks=("symbols",))) == [None, None]
    assert check_quality(["<p>ok</p>"]) == ["too_short"]  # order of config.checks: length before markup
    assert check_quality([]) == []


def test_batch_result_equals_one_by_one():
    # Batch scans join texts; nothing may leak across the separator.
    rng = random.Random(0)
    pool = CLEAN + [t for ts in NOISE.values() for t in ts] + ["!!!!!!!!", "!!!!!!!!", "buy now", "buy now buy"]
    texts = [rng.choice(pool) for _ in range(300)]
    assert check_quality(texts) == [check_quality([t])[0] for t in texts]


def test_thresholds_are_configurable():
    text = "Total: 12345 items, 67890 units shipped"
    assert DETECTORS["digits"]([text]) == [None]
    assert DETECTORS["digits"]([text], QualityConfig(max_digit_ratio=0.2)) == ["digit_ratio"]
    assert DETECTORS["length"]([CLEAN[0]], QualityConfig(max_length=50)) == ["too_long"]
    with pytest.raises(ValueError):
        QualityConfig(checks=("nonsense",))


def test_length_counts_cjk_sensibly():
    assert text_length("abc def") == 6  # whitespace is not counted
    assert text_length("血压正常") == 12
    assert check_quality(["血压正常。"]) == ["too_short"]
    assert check_quality(["患者血压正常，无明显不适。"]) == [None]
    assert check_quality(["Blood pressure ok."]) == ["too_short"]


def test_repetition_measures():
    assert repeated_ngram_fraction("buy now buy now buy now") == pytest.approx(0.5)
    assert repeated_ngram_fraction("the quick brown fox jumps over the lazy dog") == 0.0
    assert repeated_ngram_fraction("哈哈哈哈哈") == pytest.approx(2 / 3)


def test_vectorised_unit_repeats_match_the_regex():
    rng = random.Random(1)
    alphabet = "ab !中\n"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(400)]
    texts += ["ab" * 16, "ab" * 15 + "a", "x" * 16, "x" * 15, "中文" * 16, "abcd" * 16, "abcde" * 16, "a b " * 20]
    texts += ["x" * 8, "x" * 8]  # two halves of a run in neighbouring texts stay apart
    pattern = re.compile(r"(\S{1,4}?)\1{15,}")
    expected = [bool(pattern.search(t)) for t in texts]
    assert _unit_repeats(TextBatch(texts), 16).tolist() == expected


def test_char_class_counts():
    counts = char_class_counts(["ab 中#", ""])
    assert counts.shape[0] == 2
    assert counts[0, LATIN] == 2 and counts[0, SPACE] == 1 and counts[0, HAN] == 1 and counts[0, SYMBOL] == 1
    assert counts[1].sum() == 0
    assert char_class_counts(["，。"])[0, PUNCT] == 2


def test_normalize_text():
    assert normalize_text("ＡＢＣ１２３，全角") == "ABC123,全角"  # NFKC
    assert normalize_text("a\x00b\x07c\u200bd\te\r\nf") == "abcd\te\nf"
    assert normalize_text("<p>Hello&nbsp;<b>world</b> &amp; friends</p><script>x()</script>") == "Hello world & friends"
    assert normalize_text("a <br/> b") == "a\nb"
    placeholders = "x<y and y>z, <EMAIL> <ID_CN> <BANK_CARD> <IP> <PHONE> <ADDRESS> <NAME>"
    assert normalize_text(placeholders) == placeholders
    md = "# Title\n\nSee ![img](a.png) the [guide](http://x.org) and **bold**, *em*, `code`.\n\n\n\n## End ##"
    assert normalize_text(md) == "Title\n\nSee the guide and bold, em, code.\n\nEnd"
    assert normalize_text("  many    spaces \u3000 here  \n\n\n\n next  ") == "many spaces here\n\nnext"
    assert normalize_text("snake_case and __init__ and 2*3*4 stay") == "snake_case and __init__ and 2*3*4 stay"
    assert normalize_text("> quoted\n> text") == "quoted\ntext"
    assert normalize_text("a\ud800b") == "a\ufffdb"
    assert normalize_text("CafÃ© au lait") == "Café au lait"


def test_normalize_text_is_idempotent_and_leaves_no_markup():
    texts = (
        NOISE["markup"]
        + CLEAN
        + [
            "&amp;lt;p&amp;gt;double escaped&amp;lt;/p&amp;gt;",
            "# # nested heading",
            "||a||b||",
            "[[a](b)](c) nested links",
            "&#65313;&#65314; entity to full width",
        ]
    )
    normalised = [normalize_text(t) for t in texts]
    assert [normalize_text(t) for t in normalised] == normalised
    assert DETECTORS["markup"](normalised) == [None] * len(texts)


def test_fix_mojibake_and_strip_boilerplate():
    assert fix_mojibake("CafÃ© â€œquotedâ€\x9d") == "Café “quoted”"
    assert fix_mojibake("ä¸­æ–‡") == "中文"
    assert fix_mojibake("plain text") == "plain text"
    assert fix_mojibake("mixed 中 CafÃ©") == "mixed 中 CafÃ©"  # not a whole-text round trip
    text = "Main findings of the study.\nAll rights reserved.\n\nMore findings here.\n点击这里关注我们"
    assert strip_boilerplate_lines(text) == "Main findings of the study.\n\nMore findings here."
    assert strip_boilerplate_lines("nothing to strip") == "nothing to strip"


def test_detect_language():
    cases = {
        "The patient was admitted with chest pain and shortness of breath.": "en",
        "Blood test normal": "en",
        "患者因胸痛入院，伴有呼吸困难。": "zh",
        "我在用Python写一个数据清洗的程序。": "zh",
        "Le patient souffre d'hypertension et de diabète depuis dix ans.": "other",
        "Der Patient hat seit zehn Jahren Bluthochdruck und Diabetes.": "other",
        "患者は胸の痛みで入院しました。": "other",
        "환자는 흉통으로 입원했습니다.": "other",
        "Пациент поступил с болью в груди.": "other",
        "12345 67890": "other",
        "": "other",
    }
    assert detect_languages(list(cases)) == list(cases.values())
    assert detect_language("今天天气很好") == "zh"


def test_cleaned_corpus_has_no_noise_left():
    # The cleanliness check re-runs every detector on the cleaned output.
    raw = CLEAN + [t for ts in NOISE.values() for t in ts]
    cleaned = [strip_boilerplate_lines(normalize_text(t)) for t in raw]
    kept = [t for t, r in zip(cleaned, check_quality(cleaned)) if r is None]
    assert len(kept) >= len(CLEAN)
    for name, detector in DETECTORS.items():
        assert detector(kept) == [None] * len(kept), name


def test_throughput_is_vectorised():
    texts = (CLEAN * 1000)[:10_000]
    import time

    start = time.perf_counter()
    check_quality(texts)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"{len(texts) / elapsed:.0f} records/s"
    assert np.all(char_class_counts(texts).sum(axis=1) == [len(t) for t in texts])


def test_plain_text_shortcut_gives_the_full_normalization():
    import random

    from deepfeed.core.data.quality.normalize import _normalize_full

    pieces = [
        "word",
        "高血压",
        "Café",
        "CafÃ©",
        " ",
        "  ",
        "\t",
        "\n",
        "\n\n\n",
        "\r\n",
        "\u3000",
        "\xa0",
        "\u1680",
        "ＡＢＣ",
        "<b>",
        "&amp;",
        "# ",
        "- ",
        "* ",
        "**x**",
        "[a](b)",
        "`c`",
        "|",
        "~",
        ">",
        "\x07",
        "\x1c",
        "\u200b",
        "\u2028",
        "\ufeff",
        "\ud800",
        "ﬁ",
        "—",
        "1391234",
        "e-mail",
        "。",
        "？",
        "x_y",
        "#",
        "#12",
        " ## ",
        ":---",
        "---",
        "|a|",
        "![i](u)",
    ]
    rng = random.Random(5)
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 12))) for _ in range(20_000)]
    texts += [
        "How do I reset my password? #12",
        "order #12 ships\n:---",
        "a # b",
        "# title",
        "title ##",
        "x\n  ### y",
        "今天天气怎么样？ 预计明天发货。",
        "well-known  spaces  ",
        " lead and trail ",
    ]
    assert [normalize_text(t) for t in texts] == [_normalize_full(t, shortcut=False) for t in texts]
