"""Citizen ID (GB 11643) and USCC (GB 32100) validators agree with python-stdnum; masking."""

from __future__ import annotations

import random

import pytest
from stdnum import numdb
from stdnum.cn import ric, uscc

from exnode.policies.quality import (
    citizen_id_error,
    compile_ruleset,
    is_citizen_id,
    is_uscc,
    mask_id,
    scrub_ids,
    uscc_error,
)

USCC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"


def _area_codes() -> list[str]:
    codes = []
    for _, province, _, _, children in numdb.get("cn/loc").prefixes:
        for _, county, _, _, _ in children:
            codes.append(province + county)
    return codes


AREAS = _area_codes()


def stdnum_ric(value: str) -> bool:
    """stdnum's answer; stdnum 2.2 raises KeyError for a known province + unknown county."""
    try:
        return ric.is_valid(value)
    except KeyError:
        return False


def make_ric(rnd: random.Random) -> str:
    area = rnd.choice(AREAS)
    body = f"{area}{rnd.randint(1900, 2024):04d}{rnd.randint(1, 12):02d}{rnd.randint(1, 28):02d}"
    body += f"{rnd.randrange(1000):03d}"
    return body + ric.calc_check_digit(body + "0")


def corrupt(rnd: random.Random, value: str, alphabet: str) -> str:
    kind = rnd.randrange(12)
    pos = rnd.randrange(len(value))
    if kind == 0:  # substitute one character
        return value[:pos] + rnd.choice(alphabet) + value[pos + 1 :]
    if kind == 1:  # transpose two neighbours
        pos = min(pos, len(value) - 2)
        return value[:pos] + value[pos + 1] + value[pos] + value[pos + 2 :]
    if kind == 2:  # wrong check character
        return value[:-1] + rnd.choice(alphabet)
    if kind == 3:  # drop a character
        return value[:pos] + value[pos + 1 :]
    if kind == 4:  # extra character
        return value[:pos] + rnd.choice(alphabet) + value[pos:]
    if kind == 5:  # lower case
        return value.lower()
    if kind == 6:  # separators and padding, which stdnum's compact() removes (or not)
        return f" {value[:6]}-{value[6:]} "
    if kind == 7:  # full-width digits
        return value.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789"})
    if kind == 8:  # impossible month
        return value[:10] + "13" + value[12:]
    if kind == 9:  # unknown area code
        return rnd.choice(["999999", "119999", "000000", "710000"]) + value[6:]
    if kind == 10:  # a letter where digits belong
        return value[:pos] + rnd.choice("ABIOXZ") + value[pos + 1 :]
    return "".join(rnd.choice(alphabet) for _ in range(rnd.choice([15, 17, 18, 19])))


def test_citizen_id_agrees_with_stdnum_on_valid_numbers() -> None:
    rnd = random.Random(11643)
    numbers = [make_ric(rnd) for _ in range(3000)]
    agree = [is_citizen_id(n) == stdnum_ric(n) for n in numbers]
    assert all(agree)
    # Area codes with validity periods make some of these invalid; most must be valid.
    assert sum(map(stdnum_ric, numbers)) > 1000


def test_citizen_id_agrees_with_stdnum_on_corrupted_numbers() -> None:
    rnd = random.Random(20240105)
    cases = [corrupt(rnd, make_ric(rnd), "0123456789X") for _ in range(4000)]
    mismatches = [c for c in cases if is_citizen_id(c) != stdnum_ric(c)]
    assert mismatches == []
    assert sum(map(stdnum_ric, cases)) < len(cases) // 2


def test_citizen_id_year_dependent_area_codes() -> None:
    # 110103 (崇文区) existed until 2010; 810000 (Hong Kong) from 1997.
    for area, year, expected in [
        ("110103", 2009, True),
        ("110103", 2010, True),
        ("110103", 2011, False),
        ("810000", 1996, False),
        ("810000", 1997, True),
    ]:
        body = f"{area}{year}0101001"
        number = body + ric.calc_check_digit(body + "0")
        assert is_citizen_id(number) is expected, number
        assert stdnum_ric(number) is expected


def test_citizen_id_error_gives_stdnum_reason() -> None:
    assert citizen_id_error("360426199101010071") is None
    assert "checksum" in (citizen_id_error("360426199101010072") or "")
    assert "length" in (citizen_id_error("36042619910101007") or "")
    assert citizen_id_error(360426199101010071) == "not a string"
    assert not is_citizen_id(None)
    assert not is_citizen_id(["3"] * 18)


def make_uscc(rnd: random.Random) -> str:
    body = rnd.choice("123456789") + rnd.choice("123459")
    body += rnd.choice(AREAS) + "".join(rnd.choices(USCC_CHARS, k=9))
    return body + uscc.calc_check_digit(body + "0")


def test_uscc_agrees_with_stdnum() -> None:
    rnd = random.Random(32100)
    valid = [make_uscc(rnd) for _ in range(2000)]
    corrupted = [corrupt(rnd, make_uscc(rnd), USCC_CHARS + "IOSVZ") for _ in range(4000)]
    for code in valid + corrupted:
        assert is_uscc(code) == uscc.is_valid(code), code
    assert all(map(uscc.is_valid, valid))
    assert sum(map(uscc.is_valid, corrupted)) < len(corrupted) // 2


def test_uscc_known_examples() -> None:
    assert is_uscc("91110000600037341L")
    assert not is_uscc("91110000600037341M")
    assert not is_uscc("A1110000600037341L")
    assert is_uscc("9 1 110000 600037341L")  # stdnum's compact() removes spaces
    assert uscc_error("91110000600037341L") is None
    assert "checksum" in (uscc_error("91110000600037341M") or "")
    assert not is_uscc(91110000600037341)


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("110101199003074514", "110101**********14"),
        ("11010119900307451X", "110101**********1X"),
        ("110101900307451", "110101*******51"),
        ("E12345678", "E1*****78"),
        ("123456", "******"),
        ("", ""),
    ],
)
def test_mask_id(value: str, masked: str) -> None:
    assert mask_id(value) == masked


def test_scrub_ids_masks_id_shaped_substrings_only() -> None:
    text = "ids 110101199003074514, 11010119900307451x and 110101900307451; phone 13800138000"
    out = scrub_ids(text)
    assert "110101199003074514" not in out
    assert "110101**********14" in out
    assert "110101**********1x" in out
    assert "110101*******51" in out
    assert "13800138000" in out  # 11 digits: not an ID
    assert scrub_ids("91110000600037341L") == "91110000600037341L"  # USCC left alone


def test_rules_agree_with_stdnum_through_the_engine() -> None:
    rnd = random.Random(7)
    ids = [make_ric(rnd) for _ in range(1500)]
    ids += [corrupt(rnd, make_ric(rnd), "0123456789X") for _ in range(1500)]
    codes = [make_uscc(rnd) for _ in range(1500)]
    codes += [corrupt(rnd, make_uscc(rnd), USCC_CHARS + "IOSVZ") for _ in range(1500)]
    rows = [{"cid": c, "org": u} for c, u in zip(ids * 2, codes * 2, strict=True)]  # repeats too
    spec = {
        "resource": "t",
        "rules": [{"rule": "citizen_id", "field": "cid"}, {"rule": "uscc", "field": "org"}],
    }
    result = compile_ruleset(spec).check(rows)
    bad_cid = {r["cid"] for r, vs in result.failed if any(v.rule == "citizen_id" for v in vs)}
    bad_org = {r["org"] for r, vs in result.failed if any(v.rule == "uscc" for v in vs)}
    assert bad_cid == {c for c in ids if not stdnum_ric(c)}
    assert bad_org == {u for u in codes if not uscc.is_valid(u)}
