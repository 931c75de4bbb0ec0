"""Benchmark of the data rule-check engine (数据规则约束检查) on synthetic person rows.

Generates N rows (default 1,000,000) with valid citizen IDs and USCCs, corrupts
about 2% of them, checks them with a 10-rule set (plus 4 cleaning steps), and
compares the rate with the anchor: a plain loop calling ``stdnum.cn.ric.is_valid``
on each citizen ID. Rates are per CPU-second of this process (one core, not
distorted by other load on the machine); wall-clock rates are printed too. The run
fails (exit 1) unless exactly the corrupted rows are rejected. Ends with one JSON line.

    .venv/bin/python bench/bench_rules.py [--rows N] [--uscc-pool K] [--anchor-rows M]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from benchlib import always_valid_counties
from stdnum.cn import ric, uscc

from exnode.policies.quality import compile_ruleset

SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程"
)
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉萍红娥玲芬燕彬鹏辉斌宇浩凯"
USCC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # the GB 32100 character set, for generating only
STATUSES = ["1", "2", "3", "9"]
CORRUPTIONS = (
    "id_checksum",
    "birth_mismatch",
    "sex_mismatch",
    "division",
    "uscc",
    "amount",
    "status",
    "name_empty",
    "name_long",
    "duplicate_id",
)


def make_rows(
    n: int, seed: int, uscc_pool: int
) -> tuple[list[dict[str, Any]], list[str], set[int]]:
    """Rows, the division code table, and the indices of rows that must fail."""
    rnd = random.Random(seed)
    counties = always_valid_counties()
    start = date(1940, 1, 1).toordinal()
    span = date(2005, 12, 31).toordinal() - start
    now = datetime(2025, 1, 1)

    def new_uscc() -> str:
        body = "91" + rnd.choice(counties) + "".join(rnd.choices(USCC_CHARS, k=9))
        return body + uscc.calc_check_digit(body + "0")

    pool = [new_uscc() for _ in range(uscc_pool)] if uscc_pool else []
    seen_ids: set[str] = set()
    rows: list[dict[str, Any]] = []
    bad: set[int] = set()
    for i in range(n):
        while True:
            born = date.fromordinal(start + rnd.randrange(span))
            seq = rnd.randrange(1000)
            body = f"{rnd.choice(counties)}{born:%Y%m%d}{seq:03d}"
            cid = body + ric.calc_check_digit(body + "0")
            if cid not in seen_ids:
                seen_ids.add(cid)
                break
        shape = rnd.random()
        if shape < 0.05:
            birth = f"{born.year}/{born.month}/{born.day}"  # cleaned by the date step
        elif shape < 0.07:
            birth = f"{born:%Y%m%d}"
        else:
            birth = born.isoformat()
        name = rnd.choice(SURNAMES) + "".join(rnd.choices(GIVEN, k=rnd.randint(1, 2)))
        if rnd.random() < 0.1:
            name = f" {name} "  # cleaned by trim
        row = {
            "id": i + 1,
            "name": name,
            "citizen_id": cid,
            "birth_date": birth,
            "sex": "1" if seq % 2 else "2",
            "division": rnd.choice(counties),
            "uscc": rnd.choice(pool) if pool else new_uscc(),
            "amount": Decimal(rnd.randrange(0, 50_000_000)).scaleb(-2),
            "updated_at": now - timedelta(seconds=rnd.randrange(63_072_000)),
            "status": rnd.choice(STATUSES),
        }
        if rnd.random() < 0.02:
            kind = rnd.choice(CORRUPTIONS)
            bad.add(i)
            if kind == "id_checksum":
                digit = cid[17]
                row["citizen_id"] = cid[:17] + ("0" if digit != "0" else "1")
            elif kind == "birth_mismatch":
                row["birth_date"] = (born + timedelta(days=1)).isoformat()
            elif kind == "sex_mismatch":
                row["sex"] = "2" if row["sex"] == "1" else "1"
            elif kind == "division":
                row["division"] = "999999"
            elif kind == "uscc":
                code = row["uscc"]
                row["uscc"] = code[:17] + ("0" if code[17] != "0" else "1")
            elif kind == "amount":
                row["amount"] = -row["amount"] - 1
            elif kind == "status":
                row["status"] = "X"
            elif kind == "name_empty":
                row["name"] = "  "
            elif kind == "name_long":
                row["name"] = "张" * 40
            elif kind == "duplicate_id" and i > 0:
                j = rnd.randrange(i)
                row["citizen_id"] = rows[j]["citizen_id"]
                row["birth_date"] = rows[j]["birth_date"]
                row["sex"] = rows[j]["sex"]
                if j not in bad:
                    bad.add(j)
            else:
                bad.discard(i)
        rows.append(row)
    return rows, counties, bad


def ruleset_spec(divisions: list[str]) -> dict[str, Any]:
    """The 10-rule set of the benchmark, with 4 cleaning steps."""
    return {
        "resource": "person",
        "code_tables": {"division": {"codes": divisions}},
        "clean": [
            {"step": "trim", "fields": ["name", "citizen_id", "uscc"]},
            {"step": "upper", "fields": ["citizen_id", "uscc"]},
            {"step": "date", "fields": ["birth_date"]},
            {"step": "empty_to_null", "fields": ["name"]},
        ],
        "rules": [
            {"rule": "required", "fields": ["id", "name", "citizen_id", "birth_date", "sex"]},
            {"rule": "citizen_id", "field": "citizen_id"},
            {
                "rule": "citizen_id_matches",
                "field": "citizen_id",
                "birth_date": "birth_date",
                "sex": "sex",
            },
            {"rule": "unique", "field": "citizen_id"},
            {"rule": "length", "field": "name", "min": 2, "max": 20},
            {"rule": "enum", "field": "sex", "values": ["1", "2"]},
            {"rule": "code_table", "field": "division", "table": "division"},
            {"rule": "uscc", "field": "uscc"},
            {"rule": "range", "field": "amount", "min": 0, "max": 10_000_000},
            {"rule": "enum", "field": "status", "values": STATUSES},
        ],
    }


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB (0 where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures and one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows to generate and check")
    ap.add_argument(
        "--uscc-pool",
        type=int,
        default=100_000,
        help="distinct employer USCCs the rows draw from (0: a new USCC on every row)",
    )
    ap.add_argument(
        "--anchor-rows", type=int, default=0, help="IDs for the anchor loop (0: all rows)"
    )
    ap.add_argument("--seed", type=int, default=20240105)
    args = ap.parse_args(argv)
    if args.rows < 1:
        ap.error("--rows must be positive")

    t0 = time.perf_counter()
    rows, divisions, expected_bad = make_rows(args.rows, args.seed, args.uscc_pool)
    gen_s = time.perf_counter() - t0
    print(f"generated {len(rows):,} rows in {gen_s:.1f} s ({len(expected_bad):,} corrupted)")

    ids = [r["citizen_id"] for r in rows]
    ruleset = compile_ruleset(ruleset_spec(divisions))
    print(f"RSS with the rows in memory, before checking: {current_rss_mb():,.0f} MiB")

    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = ruleset.check(rows)
    check_wall = time.perf_counter() - wall0
    check_cpu = time.process_time() - cpu0
    rate = len(rows) / check_cpu
    failed_ids = {r["id"] - 1 for r, _ in result.failed}
    print(
        f"rules:  {len(rows):,} rows in {check_cpu:.2f} CPU-s = {rate:,.0f} rows/s "
        f"(wall {check_wall:.2f} s = {len(rows) / check_wall:,.0f} rows/s; "
        f"{len(result.passed):,} passed, {len(result.failed):,} failed)"
    )
    if failed_ids != expected_bad:
        missed = len(expected_bad - failed_ids)
        extra = len(failed_ids - expected_bad)
        print(f"MISMATCH: {missed} corrupted rows passed, {extra} clean rows failed")
        return 1
    for key, n in sorted(result.counts().items()):
        print(f"  {key:32s} {n:>7,}")
    sample = result.failed[0][1][0]
    print(f"  e.g. {sample.rule} / {sample.field}: {sample.reason}")

    anchor_ids = ids[: args.anchor_rows] if args.anchor_rows else ids
    is_valid = ric.is_valid
    wall0, cpu0 = time.perf_counter(), time.process_time()
    valid = 0
    for cid in anchor_ids:
        if is_valid(cid):
            valid += 1
    anchor_wall = time.perf_counter() - wall0
    anchor_cpu = time.process_time() - cpu0
    anchor_rate = len(anchor_ids) / anchor_cpu
    print(
        f"anchor: {len(anchor_ids):,} ric.is_valid calls in {anchor_cpu:.2f} CPU-s "
        f"= {anchor_rate:,.0f} IDs/s (wall {len(anchor_ids) / anchor_wall:,.0f} IDs/s; "
        f"{valid:,} valid)"
    )
    ratio = rate / anchor_rate
    rss = peak_rss_mb()
    print(f"ratio rules/anchor: {ratio:.2f}; peak RSS {rss:,.0f} MiB")
    print(
        json.dumps(
            {
                "bench": "rules",
                "rows": len(rows),
                "rows_per_s": round(rate),
                "anchor_rows_per_s": round(anchor_rate),
                "ratio": round(ratio, 3),
                "peak_rss_mb": round(rss, 1),
                "wall_rows_per_s": round(len(rows) / check_wall),
                "uscc_pool": args.uscc_pool,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
