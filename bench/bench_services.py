"""make bench-services: the sharing services end to end, through the center to a holder
bureau, beside PostgreSQL's own COPY of the same rows.

A star of real ``exnode run`` processes on a Mosquitto of our own (TCP_NODELAY, as the
shipped configuration sets): b1 owns ``people`` in a throwaway database of the local
PostgreSQL (127.0.0.1:5432) and keeps it (``held_at: owner``, 适度分布); b2 holds
unconditional query and verify grants; every request goes b2 -> center (relay, grant
checked) -> b1 (grant checked again) and back.

(a) Verification of N records (default 100,000) in one batch: rows/s end to end.
(b) Single-record verification round trips (default 300, one at a time): p50/p99, as
    the daemon measures them (b2's control route, from send to answer) and as the CLI
    client sees them (plus the control socket).
(c) A download of all M rows (default 1,000,000) with ``exnode query -o FILE`` (CSV),
    beside ``COPY (SELECT ...) TO STDOUT`` of the same rows from b1's database in the
    same run: rows/s of each and their ratio; the peak RSS (VmHWM) of each node.

Prints figures with targets, then one JSON line.

    .venv/bin/python bench/bench_services.py [--rows M] [--verify N] [--singles K]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from benchlib import start_mosquitto

from exnode.node.app.client import call
from exnode.node.tools.cluster import LocalStar, exnode_cmd, wait_until

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_VERIFY_RPS = 50_000
TARGET_P50_MS, TARGET_P99_MS = 20.0, 100.0
TARGET_RATIO, TARGET_RSS_MB = 0.5, 200.0


def load(dsn: str, n: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE people (citizen_id char(18) PRIMARY KEY, name text, "
                  "birth_date date, phone text, district text)")
        with c.cursor().copy("COPY people FROM STDIN") as cp:
            for i in range(n):
                cp.write_row((f"1101{i:014d}", f"姓名{i}",
                              f"19{70 + i % 30}-0{1 + i % 9}-1{i % 9}", f"138{i:08d}",
                              ("东城", "西城", "朝阳")[i % 3]))
        c.execute("VACUUM ANALYZE people")
        c.execute("CHECKPOINT")  # the load's writes land now, not in a measured phase


def peak_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--verify", type=int, default=100_000)
    ap.add_argument("--singles", type=int, default=300)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="exn-bsv-", dir="/tmp"))
    dbname = f"exnode_bench_{uuid.uuid4().hex[:8]}"
    dsn = f"postgresql://postgres@127.0.0.1:5432/{dbname}"
    with psycopg.connect(ADMIN, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {dbname}")
    broker = star = None
    try:
        t = time.monotonic()
        load(dsn, args.rows)
        print(f"loaded {args.rows:,} rows into b1's PostgreSQL in {time.monotonic() - t:.1f} s",
              flush=True)
        broker, port = start_mosquitto(root)
        cat = {"name": "人口基本信息", "abstract": "基准测试用人口数据", "classification": "A01",
               "share": "unconditional", "held_at": "owner"}
        res = {"database": "db", "table": "people", "key": ["citizen_id"], "owner": "b1"}
        star = LocalStar(root / "star", "127.0.0.1", port, settings={
            "log": {"level": "warning"}}, node_settings={
            "b1": {"databases": {"db": {"url": dsn.replace("postgresql://",
                                                           "postgresql+psycopg://")}},
                   "resources": {"people": {**res, "catalog": cat}}},
            "b2": {}})
        star.up()
        for n in ("b2", "center"):
            wait_until(lambda n=n: star.call(n, "GET", "/catalog"), 60, what=f"catalog at {n}")
        for svc in ("verify", "query"):
            r = star.cli("b2", "access", "request", "people", "--service", svc,
                         "--purpose", "bench", "--json")
            assert r.returncode == 0, r.stderr
        wait_until(lambda: len(star.call("b1", "GET", "/access/grants")) == 2, 60,
                   what="grants at the holder")
        sock = star.socket("b2")

        # (a) one batch
        recs = [[f"1101{i:014d}", f"姓名{i}" if i % 10 else "别人"] for i in
                range(0, args.rows, max(1, args.rows // args.verify))][:args.verify]
        body = {"resource": "people", "key": ["citizen_id"], "check": ["name"],
                "records": recs, "timeout": 300}
        call(sock, "POST", "/verify", {**body, "records": recs[:10]}, 60)  # warm
        t = time.monotonic()
        out = call(sock, "POST", "/verify", body, 320)
        batch_s = time.monotonic() - t
        found = sum(1 for f, _m in out["results"] if f)
        matched = sum(1 for f, m in out["results"] if f and all(m))
        assert found == len(recs) and matched == len(recs) - sum(
            1 for r in recs if r[1] == "别人"), (found, matched)
        v_rps = len(recs) / batch_s
        print(f"(a) verification, {len(recs):,} records in one batch: {batch_s:.2f} s, "
              f"{v_rps:,.0f} records/s (target >= {TARGET_VERIFY_RPS:,}; "
              f"{v_rps / TARGET_VERIFY_RPS:.2f} of it)", flush=True)

        # (b) single records
        inner, outer = [], []
        for i in range(args.singles):
            one = {**body, "records": [recs[i % len(recs)]], "timeout": 30}
            t = time.monotonic()
            r = call(sock, "POST", "/verify", one, 40)
            outer.append((time.monotonic() - t) * 1000)
            inner.append(r["ms"])
        p50, p99 = statistics.median(inner), pct(inner, 99)
        print(f"(b) single verification round trip b2 -> center -> b1 -> center -> b2, "
              f"{args.singles} in a row: p50 {p50:.1f} ms, p99 {pct(inner, 99):.1f} ms "
              f"(targets {TARGET_P50_MS:.0f} / {TARGET_P99_MS:.0f}); with the CLI's control "
              f"socket: p50 {statistics.median(outer):.1f} ms, p99 {pct(outer, 99):.1f} ms",
              flush=True)

        # (c) download beside COPY
        with psycopg.connect(dsn) as c:
            t = time.monotonic()
            n_copy = 0
            with c.cursor().copy("COPY (SELECT citizen_id, name, birth_date, phone, district "
                                 "FROM people ORDER BY citizen_id) TO STDOUT") as cp:
                for block in cp:
                    n_copy += bytes(block).count(b"\n")
            copy_s = time.monotonic() - t
        assert n_copy == args.rows, n_copy
        target = root / "people.csv"
        t = time.monotonic()
        r = subprocess.run([*exnode_cmd(), "-c", str(star.config_path("b2")), "query",
                            "people", "--page", "50000", "-o", str(target), "--json"],
                           capture_output=True, text=True, timeout=3600)
        q_s = time.monotonic() - t
        assert r.returncode == 0, r.stderr
        with target.open(encoding="utf-8", newline="") as f:
            n_q = sum(1 for _ in csv.reader(f)) - 1
        assert n_q == args.rows, n_q
        copy_rps, q_rps = n_copy / copy_s, n_q / q_s
        inside_s = float(json.loads(r.stdout)["seconds"])  # after the CLI's start-up
        in_rps = n_q / inside_s
        rss = {n: round(peak_kb(p.pid) / 1024, 1) for n, p in star.procs.items()}
        print(f"(c) download of {args.rows:,} rows: exnode query {q_s:.2f} s "
              f"({q_rps:,.0f} rows/s), COPY TO STDOUT {copy_s:.2f} s ({copy_rps:,.0f} rows/s); "
              f"ratio {q_rps / copy_rps:.3f} (target >= {TARGET_RATIO}); without the "
              f"CLI's start-up ({q_s - inside_s:.2f} s of imports and plugins): "
              f"{inside_s:.2f} s, {in_rps:,.0f} rows/s, ratio {in_rps / copy_rps:.3f}",
              flush=True)
        print("    peak RSS: " + ", ".join(f"{n} {v} MB" for n, v in rss.items())
              + f" (target <= {TARGET_RSS_MB:.0f} MB each)", flush=True)
        print(json.dumps({
            "bench": "services", "verify_records": len(recs),
            "verify_batch_s": round(batch_s, 3), "verify_rps": round(v_rps),
            "verify_target_rps": TARGET_VERIFY_RPS, "single_p50_ms": round(p50, 2),
            "single_p99_ms": round(p99, 2),
            "single_client_p50_ms": round(statistics.median(outer), 2),
            "single_client_p99_ms": round(pct(outer, 99), 2), "rows": args.rows,
            "query_s": round(q_s, 2), "query_rps": round(q_rps), "copy_s": round(copy_s, 3),
            "copy_rps": round(copy_rps), "ratio": round(q_rps / copy_rps, 4),
            "query_transfer_s": round(inside_s, 2),
            "transfer_ratio": round(in_rps / copy_rps, 4),
            "peak_rss_mb": rss}))
    finally:
        if star is not None:
            star.close()
        if broker is not None:
            broker.terminate()
        with psycopg.connect(ADMIN, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
