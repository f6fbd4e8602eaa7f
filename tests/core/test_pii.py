import time

import pytest

from deepfeed.core.data.pii import (
    PLACEHOLDERS,
    find_pii,
    has_pii,
    luhn_ok,
    scrub,
    scrub_batch,
    total_counts,
    valid_cn_id,
)

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def make_cn_id(first17: str) -> str:
    """Independent implementation of the GB 11643 check character."""
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS))
    return first17 + "10X98765432"[total % 11]


def make_card(prefix: str) -> str:
    """Append the Luhn check digit to `prefix`."""
    for d in "0123456789":
        digits = [int(c) for c in prefix + d][::-1]
        s = sum(x if i % 2 == 0 else (x * 2 - 9 if x > 4 else x * 2) for i, x in enumerate(digits))
        if s % 10 == 0:
            return prefix + d
    raise AssertionError


ID_VALID = make_cn_id("11010519900307123")
ID_WITH_X = next(i for i in (make_cn_id(f"4403051985062{n:04d}") for n in range(100)) if i.endswith("X"))
ID_BAD = ID_VALID[:-1] + ("0" if ID_VALID[-1] != "0" else "1")
CARD_VISA = make_card("411111111111111")
CARD_UNIONPAY = make_card("622202123456789012")  # 19 digits
CARD_BAD = CARD_VISA[:-1] + str((int(CARD_VISA[-1]) + 1) % 10)


def test_fixture_numbers_are_what_they_claim():
    assert len(ID_VALID) == 18 and valid_cn_id(ID_VALID)
    assert ID_WITH_X.endswith("X") and valid_cn_id(ID_WITH_X) and valid_cn_id(ID_WITH_X.lower())
    assert not valid_cn_id(ID_BAD)
    assert not valid_cn_id(make_cn_id("11010519900230123"))  # February 30th
    assert luhn_ok(CARD_VISA) and luhn_ok(CARD_UNIONPAY) and not luhn_ok(CARD_BAD)
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713") and not luhn_ok("79927398710")


def test_id_checksum_accepts_exactly_one_check_character():
    assert valid_cn_id("11010519491231002X")  # the example printed in GB 11643-1999
    assert valid_cn_id("440524188001010014")
    seen = set()
    for n in range(300):
        good = make_cn_id(f"32010219880115{n:03d}")
        seen.add(good[-1])
        assert valid_cn_id(good)
        assert not any(valid_cn_id(good[:-1] + c) for c in "0123456789X" if c != good[-1])
    assert seen == set("0123456789X")  # every residue of MOD 11-2 was exercised


# (kind, canary, sentence it is seeded into)
CANARIES = [
    ("EMAIL", "zhang.san+ml@mail.example.com.cn", "请联系{}获取数据"),
    ("EMAIL", "Bob_O-Neil99@example.org", "Write to {}."),
    ("ID_CN", ID_VALID, "身份证号{}，请核对"),
    ("ID_CN", ID_WITH_X, "ID: {} (with X)"),
    ("ID_CN", ID_WITH_X.lower(), "证件{}"),
    ("BANK_CARD", CARD_VISA, "card {} exp 12/29"),
    ("BANK_CARD", " ".join(CARD_VISA[i : i + 4] for i in range(0, 16, 4)), "卡号：{}。"),
    ("BANK_CARD", "-".join(CARD_VISA[i : i + 4] for i in range(0, 16, 4)), "pay with {} now"),
    ("BANK_CARD", CARD_UNIONPAY, "银行卡{}"),
    ("PHONE", "13812345678", "手机{}，谢谢"),
    ("PHONE", "+86 139 1234 5678", "call {} tomorrow"),
    ("PHONE", "0086-15012345678", "电话：{}"),
    ("PHONE", "010-62345678", "办公室电话{}转分机"),
    ("PHONE", "(0755) 28123456", "深圳{}"),
    ("PHONE", "+44 20 7946 0958", "London office: {}."),
    ("PHONE", "+33 1 23 45 67 89", "Paris: {}"),
    ("PHONE", "(555) 234-5678", "US desk {} ext."),
    ("PHONE", "555.234.5678", "fax {}"),
    ("PHONE", "+1 415-555-2671", "SF: {}"),
    ("IP", "192.168.10.254", "host {} is down"),
    ("IP", "8.8.8.8", "DNS={}."),
    ("IP", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "v6 {} ok"),
    ("IP", "fe80::1ff:fe23:4567:890a", "link-local {}"),
    ("ADDRESS", "1600 Pennsylvania Avenue", "We met at {} yesterday."),
    ("ADDRESS", "42 Elm St., Apt 5B, Springfield, IL 62704", "Ship to {} please"),
    ("ADDRESS", "北京市朝阳区建国路88号", "我住在{}，欢迎来玩"),
    ("ADDRESS", "广东省深圳市南山区科技园南路18号3栋1201室", "地址：{}"),
    ("ADDRESS", "上海市长宁区愚园路1088弄12号", "寄到{}"),
    ("NAME", "John Smith", "Dr. {} will see you"),
    ("NAME", "Alice O'Brien", "Hello, my name is {} and I like tea"),
    ("NAME", "Mary Jones", "Name: {}\nAge: 41"),
    ("NAME", "Marcos Bagno", "O Prof. Dr. {} é professor"),
    ("NAME", "J. McDonald-Smith", "Ms. {} called"),
    ("NAME", "Saeed Torabzadeh", "Authors: {} <saeed.t@example.com>"),
    ("NAME", "张伟", "你好，我叫{}，今天来咨询"),
    ("NAME", "欧阳娜娜", "我的名字是{}。"),
    ("NAME", "李小红", "姓名：{}，性别：女"),
    ("NAME", "赵丽", "收件人{}，电话见下"),
    ("NAME", "孙小梅", "患者：{}"),
    ("NAME", "王", "请{}先生到三号窗口"),
]


@pytest.mark.parametrize(("kind", "canary", "template"), CANARIES)
def test_seeded_canary_is_removed(kind, canary, template):
    text = template.format(canary)
    result = scrub(text)
    assert canary not in result.text
    assert PLACEHOLDERS[kind] in result.text
    assert result.counts.get(kind) == 1, result
    # The span found is exactly the canary, not more of the sentence.
    spans = [s for s in find_pii(text) if s.kind == kind]
    assert [text[s.start : s.end] for s in spans] == [canary]


def test_everything_in_one_record_and_context_is_kept():
    text = (
        f"Mr. John Smith (john@example.com, +1 415-555-2671) paid with {CARD_VISA} from 10.0.0.7; "
        f"我叫张伟，身份证{ID_VALID}，手机13812345678，住北京市海淀区中关村大街27号。"
    )
    out = scrub(text)
    assert out.counts == {"NAME": 2, "EMAIL": 1, "PHONE": 2, "BANK_CARD": 1, "IP": 1, "ID_CN": 1, "ADDRESS": 1}
    assert out.text.startswith("Mr. <NAME> (<EMAIL>, <PHONE>) paid with <BANK_CARD> from <IP>;")
    assert "身份证<ID_CN>，手机<PHONE>" in out.text


def test_invalid_checksums_are_not_replaced_as_ids_or_cards():
    for text in (f"编号{ID_BAD}", f"card {CARD_BAD} declined", "ref 11010519900230123X"):
        out = scrub(text)
        assert "ID_CN" not in out.counts and "BANK_CARD" not in out.counts, out
    assert scrub(f"编号{ID_BAD}").text == f"编号{ID_BAD}"


def test_id_wins_over_phone_and_card():
    # An ID contains 11-digit runs a phone pattern could take, and may pass Luhn.
    out = scrub(f"{ID_VALID}")
    assert out.counts == {"ID_CN": 1}


def test_email_wins_over_phone():
    out = scrub("13812345678@163.com")
    assert out.counts == {"EMAIL": 1} and out.text == "<EMAIL>"


def test_full_width_digits_are_caught():
    out = scrub("电话：１３８１２３４５６７８，邮箱ａｂｃ＠ｅｘａｍｐｌｅ．ｃｏｍ。")
    assert out.text == "电话：<PHONE>，邮箱<EMAIL>。"


CLEAN = [
    "会议定于2024-05-01 10:30在三楼举行，共有120人参加。",
    "Released version 1.2.3 on 2023-12-31; see section 4.5.6.",
    "价格为1999元，库存12345件，订单号A1B2C3。",
    "The timestamp 1700000000000 is in milliseconds.",
    "Use std::vector<int> and call foo::bar() at 12:30:45.",
    "I have 3 cats and 2 dogs, born in 2019.",
    "我叫了外卖，然后叫车回家。",
    "患者高烧不退，查体发现肺部啰音。",
    "The ratio was 3.14159 and pi is about 3.1415926535.",
    "请在第3号线换乘，出口B。",
    "Score: 98.5/100, rank 7 of 2500.",
    "He drove 300 miles on Route 66.",
    "jobs:\n  build:\n    steps:\n      - name: Install dependencies\n        run: pip install -e .",
    "type User { name: String! }",
]


@pytest.mark.parametrize("text", CLEAN)
def test_ordinary_text_has_no_pii(text):
    # False positives would count as noise in the cleanliness check (< 0.3%).
    assert find_pii(text) == [] and not has_pii(text) and scrub(text).text == text


def test_invalid_ipv4_octets_are_not_ips():
    assert "IP" not in scrub("values 999.1.1.1 and 256.256.256.256").counts


def test_placeholders_are_never_detected_again():
    texts = [t.format(c) for _, c, t in CANARIES]
    once = [r.text for r in scrub_batch(texts)]
    for t in once:
        assert find_pii(t) == [], t
        assert scrub(t).text == t
    for p in PLACEHOLDERS.values():
        assert not has_pii(f"my name is {p}, Dr. {p}, 我叫{p}, 姓名：{p} {p}")


def test_batch_and_total_counts():
    results = scrub_batch(["a@b.co", "13812345678 and 13912345678", "nothing here"])
    assert [r.text for r in results] == ["<EMAIL>", "<PHONE> and <PHONE>", "nothing here"]
    assert total_counts(results) == {"EMAIL": 1, "PHONE": 2}


def test_spans_are_ordered_and_disjoint():
    text = "x@y.com 13812345678 10.1.2.3 " * 5
    spans = find_pii(text)
    assert len(spans) == 15
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))


def test_long_lines_stay_linear():
    # A 10 MB single line is one of the bad inputs the pipeline must survive.
    for line in ("a" * 2_000_000, "数据" * 1_000_000 + "路1号", "1 " * 1_000_000, "Mr Aaaa " * 250_000):
        start = time.perf_counter()
        scrub(line)
        assert time.perf_counter() - start < 3.0


# --- disguised PII (normalized before matching) ---------------------------------------


@pytest.mark.parametrize(
    "disguised, kind",
    [
        ("zq.canary\u200b.7731@exam\u200bple.org", "EMAIL"),  # zero-width spaces inside
        ("139\u200b1773\u200c0042", "PHONE"),
        ("zq.canary.7731%40example.org", "EMAIL"),  # URL percent-escape
        ("zq.canary.7731\\u0040example.org", "EMAIL"),  # backslash escape, as in a log line
        ("zq.canary.7731&#64;example.org", "EMAIL"),  # HTML character reference
        ("zq dot canary at example dot org", "EMAIL"),  # spelled-out separators
        ("zq.canary [at] example [dot] org", "EMAIL"),
        ("zq(at)example(dot)cn", "EMAIL"),
        ("ｚｑ＠ｅｘａｍｐｌｅ．ｏｒｇ", "EMAIL"),  # full-width forms (NFKC)
        ("1 3 9 1 7 7 3 0 0 4 2", "PHONE"),  # digits separated by spaces, dots, dashes
        ("139.177.300.42", "PHONE"),
        ("1391-7730-042", "PHONE"),
        ("110105.19491231.002X", "ID_CN"),
        ("6222.0212.3456.7894", "BANK_CARD"),
        ("6 2 2 2 0 2 1 2 3 4 5 6 7 8 9 4", "BANK_CARD"),
        ("１７２．３０．１１４．９", "IP"),
    ],
)
def test_disguised_pii_is_found_and_replaced_whole(disguised, kind):
    text = f"Contact: {disguised} (thanks)"
    result = scrub(text)
    assert result.text == f"Contact: {PLACEHOLDERS[kind]} (thanks)", result.text
    assert result.counts == {kind: 1}


def test_normalization_leaves_ordinary_text_and_numbers_alone():
    for text in (
        "look at it dot by dot",
        "we met at noon, the dot matrix printer at work",
        "version 1.2.3 of the tool",
        "scores 1 2 3 4 5 6 7 8 9 10 11 12 in order",
        "on 2024-01-02 at 10:30",
        "100% sure, 50%40 odds",
        "a slight depression in the smoothness of a surface",
        "高血压患者的饮食：低盐低脂。",
    ):
        assert scrub(text).text == text and not has_pii(text), text


def test_scrub_value_covers_keys_values_and_nesting():
    from deepfeed.core.data.pii import scrub_value

    value, counts = scrub_value(
        {"contact zq%40example.org": ["call 139 1773 0042", 7, None], "n": {"ip": "172.30.114.9"}}
    )
    assert value == {"contact <EMAIL>": ["call <PHONE>", 7, None], "n": {"ip": "<IP>"}}
    assert counts == {"EMAIL": 1, "PHONE": 1, "IP": 1}


def test_only_the_disguised_span_is_replaced_not_the_text_around_it():
    assert scrub("我的邮箱\u200b是zq\u200b@example.org谢谢").text == "我的邮箱\u200b是<EMAIL>谢谢"
    assert scrub("电话：１３９１７７３００４２。ﬁne").text == "电话：<PHONE>。ﬁne"
    assert scrub("ﬁle: zq%40example.org, ok").text == "ﬁle: <EMAIL>, ok"


def test_scrub_many_equals_scrub_of_each_text():
    from deepfeed.core.data.pii import scrub_many

    texts = [
        "plain text",
        "mail zq%40example.org",
        "",
        "电话：１３９１７７３００４２",
        "Dr. Jane Smith",
        "1 3 9 1 7 7 3 0 0 4 2",
        "no pii here either",
        "ends with a digit 4",
        "2 starts with one",
        "a\x00b 13917730042",
    ]
    assert scrub_many(texts) == [scrub(t) for t in texts]
