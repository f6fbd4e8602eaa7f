"""k-anonymity for quasi-identifier metadata by full-domain generalization and suppression.

Every QI column has a generalization hierarchy (level 0 = the value itself, the last
level = '*'). A *node* picks one level per column; the lattice of nodes is small (120
for age, gender, region and date), so it is searched exhaustively by total height,
lowest first, the way Samarati's algorithm does. At a node, records in equivalence classes smaller than k may
be suppressed as long as they stay within `max_suppression`; the first height with a
feasible node wins, ties going to the least suppression, then the least relative loss.

Only the distinct QI combinations (with their multiplicities) are generalized and
grouped during the search, so its cost follows the number of distinct combinations, not
the number of records.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

STAR = "*"
DEFAULT_K = 20


class Hierarchy:
    """Maps a value to its generalization at `level`; `height` is the level of '*'."""

    height: int = 1

    def generalize(self, value: Any, level: int) -> Any:
        if level <= 0:
            return value
        return STAR


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT


@dataclass(frozen=True)
class CategoricalHierarchy(Hierarchy):
    """value -> '*' (gender, and any categorical without a natural coarser form)."""

    height: int = 1


@dataclass(frozen=True)
class IntervalHierarchy(Hierarchy):
    """Number -> ranges of growing width -> '*'. Ages: widths (5, 10, 20)."""

    widths: tuple[int, ...] = (5, 10, 20)

    @property
    def height(self) -> int:  # type: ignore[override]
        return len(self.widths) + 1

    def generalize(self, value: Any, level: int) -> Any:
        if level <= 0:
            return value
        if level >= self.height or _missing(value):
            return STAR
        try:
            x = int(float(value))
        except (TypeError, ValueError):
            return STAR
        w = self.widths[level - 1]
        lo = x // w * w
        return f"{lo}-{lo + w - 1}"


AgeHierarchy = IntervalHierarchy


def _to_date(value: Any) -> _dt.date | None:
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    if isinstance(value, pd.Timestamp):
        return value.date()
    try:
        return _dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


@dataclass(frozen=True)
class DateHierarchy(Hierarchy):
    """date -> 'YYYY-MM' -> 'YYYY' -> '*'."""

    height: int = 3

    def generalize(self, value: Any, level: int) -> Any:
        if level <= 0:
            return value
        d = None if _missing(value) else _to_date(value)
        if level >= self.height or d is None:
            return STAR
        return f"{d.year:04d}-{d.month:02d}" if level == 1 else f"{d.year:04d}"


# Major Chinese cities by province; a value that names a province (or carries one,
# "广东省深圳市") resolves without the table.
_CN_PROVINCES = """
北京:北京 天津:天津 上海:上海 重庆:重庆
河北:石家庄 唐山 保定 邯郸 秦皇岛 廊坊 沧州
山西:太原 大同 运城
内蒙古:呼和浩特 包头 鄂尔多斯
辽宁:沈阳 大连 鞍山 抚顺
吉林:长春 吉林市
黑龙江:哈尔滨 齐齐哈尔 大庆
江苏:南京 苏州 无锡 常州 南通 徐州 扬州
浙江:杭州 宁波 温州 绍兴 嘉兴 金华 台州
安徽:合肥 芜湖 蚌埠
福建:福州 厦门 泉州 漳州
江西:南昌 赣州 九江
山东:济南 青岛 烟台 潍坊 淄博 临沂
河南:郑州 洛阳 开封 南阳
湖北:武汉 宜昌 襄阳
湖南:长沙 株洲 湘潭 岳阳
广东:广州 深圳 珠海 佛山 东莞 中山 汕头 惠州
广西:南宁 桂林 柳州
海南:海口 三亚
四川:成都 绵阳 德阳 宜宾
贵州:贵阳 遵义
云南:昆明 大理 丽江
西藏:拉萨
陕西:西安 咸阳 宝鸡
甘肃:兰州 天水
青海:西宁
宁夏:银川
新疆:乌鲁木齐 喀什
香港:香港 澳门:澳门 台湾:台北 高雄
"""


def _parse_provinces(table: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    # "省:城 城 省:城" — a token with a colon starts a new province.
    province = ""
    for token in table.split():
        if ":" in token:
            province, token = token.split(":", 1)
            mapping[province] = province
        mapping[token.removesuffix("市")] = province
    return mapping


CN_CITY_TO_PROVINCE = _parse_provinces(_CN_PROVINCES)
_ZIP = re.compile(r"\s*[0-9][0-9-]*\s*$")
_CN_ADMIN = re.compile(r"^(.{2,3}?)(?:省|壮族自治区|回族自治区|维吾尔自治区|自治区|特别行政区|市)")


def province_of(value: Any, mapping: Mapping[str, str] = CN_CITY_TO_PROVINCE) -> str | None:
    """'深圳' / '深圳市' / '广东省深圳市' -> '广东'; 'Austin, TX 78701' -> 'TX'; unknown -> None."""
    if _missing(value):
        return None
    s = str(value).strip()
    if "," in s:  # "City, State[ ZIP][, Country]", as English-language addresses go
        return _ZIP.sub("", s.split(",")[1]).strip() or None
    if s in mapping:
        return mapping[s]
    bare = s.removesuffix("市")
    if bare in mapping:
        return mapping[bare]
    m = _CN_ADMIN.match(s)
    if m is not None and m.group(1) in mapping:
        return mapping[m.group(1)]
    return None


@dataclass(frozen=True)
class RegionHierarchy(Hierarchy):
    """city -> province/state -> '*'. Unknown cities go straight to '*': guessing would
    leave a rare value standing."""

    mapping: Mapping[str, str] = field(default_factory=lambda: CN_CITY_TO_PROVINCE, repr=False)
    height: int = 2

    def generalize(self, value: Any, level: int) -> Any:
        if level <= 0:
            return value
        if level >= self.height:
            return STAR
        return province_of(value, self.mapping) or STAR


_AGE_WORDS = {"age"}
_DATE_WORDS = {"date", "day", "time", "birth", "dob", "birthday", "birthdate"}
_REGION_WORDS = {"region", "city", "province", "location", "place", "area", "state"}


def default_hierarchy(column: str) -> Hierarchy:
    """Guess from the column's words ("admission_date", "patient age"); substrings would
    make 'language' an age."""
    words = set(re.split(r"[^a-z]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", column).lower()))
    if words & _AGE_WORDS:
        return IntervalHierarchy()
    if words & _DATE_WORDS:
        return DateHierarchy()
    if words & _REGION_WORDS:
        return RegionHierarchy()
    return CategoricalHierarchy()


@dataclass(frozen=True)
class Suppressed:
    record_id: Any
    reason: str


@dataclass
class KAnonResult:
    records: list[dict[str, Any]] | pd.DataFrame  # same kind as the input
    levels: dict[str, int]
    suppressed: list[Suppressed]
    min_class_size: int  # over the kept records; 0 when nothing is kept
    n_classes: int
    k: int


def _frame(records: Sequence[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(records, pd.DataFrame):
        return records
    return pd.DataFrame.from_records(list(records))


def _hierarchies(qi: Sequence[str] | Mapping[str, Hierarchy]) -> dict[str, Hierarchy]:
    if isinstance(qi, Mapping):
        return dict(qi)
    return {c: default_hierarchy(c) for c in qi}


def _codes(values: pd.Series) -> np.ndarray:
    # Generalized values mix types ('*' next to ints), so classes compare as strings;
    # every kind of missing value (None, NaN, NaT) already says nothing: '*'.
    s = values.astype(object)
    return pd.factorize(s.where(s.notna(), STAR).astype(str))[0]


def _class_ids(code_columns: list[np.ndarray], n: int) -> np.ndarray:
    """Equivalence class id (0..n_classes-1) of each row, hashing column by column so the
    combined key never outgrows int64 however many columns there are."""
    key = np.zeros(n, dtype=np.int64)
    for codes in code_columns:
        key = pd.factorize(key * (int(codes.max()) + 1) + codes)[0]
    return key


def _search(
    gen_codes: dict[str, list[np.ndarray]],
    weights: np.ndarray,
    hier: dict[str, Hierarchy],
    k: int,
    limit: float,
) -> tuple[int, ...] | None:
    """The feasible node of least height (then least suppression, then least loss)."""
    cols = list(hier)
    best: tuple[tuple[int, int, float], tuple[int, ...]] | None = None
    nodes = itertools.product(*(range(hier[c].height + 1) for c in cols))
    for node in sorted(nodes, key=sum):
        if best is not None and sum(node) > best[0][0]:
            break  # every node of the lowest feasible height has been compared
        cls = _class_ids([gen_codes[c][lv] for c, lv in zip(cols, node)], len(weights))
        sizes = np.bincount(cls, weights=weights)[cls]
        n_suppressed = int(weights[sizes < k].sum())
        if n_suppressed > limit:
            continue
        loss = sum(lv / hier[c].height for c, lv in zip(cols, node))
        score = (sum(node), n_suppressed, loss)
        if best is None or score < best[0]:
            best = (score, node)
    return None if best is None else best[1]


def _rebuild(
    records: Sequence[Mapping[str, Any]] | pd.DataFrame, keep: np.ndarray, generalized: dict[str, np.ndarray]
) -> list[dict[str, Any]] | pd.DataFrame:
    """The kept records, in input order and of the input's kind, with generalized QIs."""
    if isinstance(records, pd.DataFrame):
        out = records.iloc[keep].reset_index(drop=True)
        for c, vals in generalized.items():
            out[c] = vals
        return out
    rows = []
    for j, i in enumerate(keep):
        rec = dict(records[i])
        for c, vals in generalized.items():
            rec[c] = vals[j]
        rows.append(rec)
    return rows


def anonymize(
    records: Sequence[Mapping[str, Any]] | pd.DataFrame,
    qi: Sequence[str] | Mapping[str, Hierarchy],
    k: int = DEFAULT_K,
    max_suppression: float = 0.05,
    id_column: str = "id",
) -> KAnonResult:
    """Generalize the QI columns minimally, then drop records of classes still below k.

    `qi` is a list of column names (hierarchies inferred from the names) or a mapping
    column -> Hierarchy. Records missing `id_column` are identified by position.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    if not 0.0 <= max_suppression <= 1.0:
        raise ValueError("max_suppression is a fraction of the records, in [0, 1]")
    if not isinstance(records, (pd.DataFrame, list)):
        records = list(records)  # read twice below: once into a frame, once to rebuild
    df = _frame(records)
    hier = _hierarchies(qi)
    cols = list(hier)
    n = len(df)
    if n == 0:
        return KAnonResult(records, {c: 0 for c in cols}, [], 0, 0, k)
    df_qi = pd.DataFrame({c: df[c] if c in df.columns else pd.Series([None] * n, dtype=object) for c in cols})

    # Distinct QI rows with multiplicities; every node is evaluated on these alone.
    row_to_distinct = _class_ids([_codes(df_qi[c]) for c in cols], n)
    _, first_row, weights = np.unique(row_to_distinct, return_index=True, return_counts=True)
    rep = df_qi.iloc[first_row]
    gen_values = {
        c: [
            rep[c].map(lambda v, lv=lv, h=hier[c]: h.generalize(v, lv)).to_numpy(dtype=object)
            for lv in range(hier[c].height + 1)
        ]
        for c in cols
    }
    gen_codes = {c: [_codes(pd.Series(v)) for v in gen_values[c]] for c in cols}

    node = _search(gen_codes, weights, hier, k, max_suppression * n)
    # With n >= k the all-'*' node is feasible with no suppression; only a corpus
    # smaller than k has no feasible node, and then nothing can be released.
    too_small = node is None
    if node is None:
        node = tuple(hier[c].height for c in cols)
    levels = dict(zip(cols, node))
    cls = _class_ids([gen_codes[c][lv] for c, lv in zip(cols, node)], len(weights))
    class_sizes = np.bincount(cls, weights=weights).astype(int)
    row_sizes = class_sizes[cls[row_to_distinct]]
    keep = np.flatnonzero(row_sizes >= k)

    ids = df[id_column].tolist() if id_column in df.columns else list(range(n))
    why = f"< k={k} at generalization levels {levels}"
    if too_small:
        why += f"; the corpus ({n} records) is smaller than k"
    suppressed = [
        Suppressed(ids[i], f"k-anonymity: equivalence class of {int(row_sizes[i])} {why}")
        for i in np.flatnonzero(row_sizes < k)
    ]
    # Level 0 keeps each record's own value; above it, a record takes the value of its
    # distinct row (values that print alike generalize alike).
    generalized = {c: gen_values[c][lv][row_to_distinct[keep]] for c, lv in levels.items() if lv}
    kept_classes = class_sizes[class_sizes >= k]
    return KAnonResult(
        records=_rebuild(records, keep, generalized),
        levels=levels,
        suppressed=suppressed,
        min_class_size=int(kept_classes.min()) if len(kept_classes) else 0,
        n_classes=len(kept_classes),
        k=k,
    )


def check_k_anonymity(
    records: Sequence[Mapping[str, Any]] | pd.DataFrame, qi_columns: Sequence[str], k: int = DEFAULT_K
) -> tuple[bool, int, int]:
    """(ok, min_class_size, n_violating_classes) of the QI values as they stand."""
    df = _frame(records)
    n = len(df)
    if n == 0:
        return True, 0, 0
    codes = [_codes(df[c]) if c in df.columns else np.zeros(n, dtype=np.int64) for c in qi_columns]
    class_sizes = np.bincount(_class_ids(codes, n))
    n_bad = int((class_sizes < k).sum())
    return n_bad == 0, int(class_sizes.min()), n_bad
