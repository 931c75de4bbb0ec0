"""make bench-sync: database sync through the whole exchange beside PostgreSQL's own
logical replication.

Everything runs on throwaway PostgreSQL instances (``initdb`` from the installed server,
``wal_level=logical``, free ports, data under /tmp, run as the ``postgres`` user) and a
Mosquitto of our own (TCP_NODELAY); the machine's own services are not touched.

(a) Initial load of N rows (id bigint PK, name, citizen_id char(18) with valid check
    digits, address, updated_at timestamptz), COPY-loaded into the bureau's instance:
    - native: CREATE SUBSCRIPTION (with the initial copy) in a second database of the
      center's instance, timed until pg_subscription_rel says 'r' and count(*) == N;
    - exnode: bureau b1 (trigger capture installed, idle schedule) -> center, each an
      ``exnode run`` process; POST /sync/initial, timed until the center's marker table
      (committed with the data) counts N rows, then count(*) is checked.
(b) A stream of row updates at the bureau (default 5,000 rows/s for 60 s, 50 rows per
    transaction, paced by the wall clock), trigger capture woken by LISTEN/NOTIFY. The
    generator writes ``sent_at = time.time()`` into each row in an autocommit UPDATE
    (so the stamp is taken just before the statement and its commit); a trigger on the
    center's table logs ``clock_timestamp()`` at apply for every update. Latency =
    applied_at - sent_at. Backlog: the bureau's change table, b1's outbox and the
    updates committed but not yet applied, sampled every second.
(c) Peak RSS (VmHWM) of the b1 and center processes during (a).

Prints figures with their targets, then one JSON line.

    .venv/bin/python bench/bench_sync.py [--rows N] [--stream-seconds S] [--rate R]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import glob
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import yaml
from benchlib import always_valid_counties, start_mosquitto
from psycopg import sql
from stdnum.cn import ric

from exnode.node.tools.broker import free_port
from exnode.node.tools.cluster import LocalStar

TARGET_RATIO = 2.0
TARGET_P50_MS = 250.0
TARGET_P99_MS = 1000.0
TARGET_RSS_MB = 300.0

TABLE_DDL = ("CREATE TABLE people (id bigint PRIMARY KEY, name text, citizen_id char(18), "
             "address text, updated_at timestamptz)")
COLUMNS = "id, name, citizen_id, address, updated_at"


class BenchError(Exception):
    pass


# --- throwaway PostgreSQL -------------------------------------------------------------------

def pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    if not found:
        raise BenchError("no PostgreSQL server under /usr/lib/postgresql/*/bin")
    return Path(found[-1]).parent


class PgInstance:
    """initdb + postgres as the postgres user, on a free port, data under ``root``."""

    def __init__(self, root: Path, name: str, bindir: Path) -> None:
        self.name = name
        self.bindir = bindir
        self.dir = root / f"pg-{name}"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / f"pg-{name}.log"
        self.version = "?"

    def start(self) -> None:
        self.dir.mkdir(mode=0o700)
        shutil.chown(self.dir, "postgres", "postgres")
        r = subprocess.run([str(self.bindir / "initdb"), "-D", str(self.dir), "--auth=trust",
                            "-U", "postgres", "--encoding=UTF8", "--locale=C"],
                           user="postgres", group="postgres", extra_groups=[], cwd=self.dir,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"initdb {self.name} failed: {r.stderr.strip()[-500:]}")
        self.port = free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.dir), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                 "-c", "wal_level=logical", "-c", "max_wal_size=4GB",
                 "-c", "max_connections=100"],
                user="postgres", group="postgres", extra_groups=[], cwd=self.dir,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"postgres {self.name} exited: {self.tail()}")
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise BenchError(f"postgres {self.name} did not start: "
                                     f"{self.tail()}") from None
                time.sleep(0.2)
        with self.connect("postgres") as c:
            self.version = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-5:])
        return ""

    def dsn(self, db: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={db}"

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(db), autocommit=True)

    def create_db(self, db: str) -> None:
        with self.connect("postgres") as c:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))

    def checkpoint(self) -> None:
        with self.connect("postgres") as c:
            c.execute("CHECKPOINT")

    def stop(self) -> None:
        p = self.proc
        self.proc = None
        if p is None or p.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, 60), (signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
            try:
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


# --- CPU accounting -------------------------------------------------------------------------

_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(ppid, own CPU s, reaped children's CPU s) from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    return (int(rest[1]), (int(rest[11]) + int(rest[12])) / _TCK,
            (int(rest[13]) + int(rest[14])) / _TCK)


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each process tree (a postmaster and its backends)."""
    stats: dict[int, tuple[int, float, float]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (st := _stat(int(d))) is not None:
            stats[int(d)] = st
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        kids.setdefault(ppid, []).append(pid)

    def tree(pid: int) -> float:
        st = stats.get(pid)
        if st is None:
            return 0.0
        return st[1] + st[2] + sum(tree(k) for k in kids.get(pid, []))

    out = {name: tree(pid) for name, pid in pids.items()}
    t = os.times()
    out["bench"] = t.user + t.system
    return out


def cpu_line(before: dict[str, float], after: dict[str, float]) -> str:
    return ", ".join(f"{k} {after[k] - before.get(k, 0.0):.1f}" for k in after)


# --- data -----------------------------------------------------------------------------------

SURNAMES = ("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐"
            "许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程")
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚桂华玉萍红娥玲芬燕彬鹏辉斌宇浩凯"
CITIES = ("北京市东城区", "上海市黄浦区", "广州市越秀区", "成都市锦江区", "杭州市西湖区",
          "武汉市江岸区", "南京市玄武区", "西安市碑林区", "天津市和平区", "重庆市渝中区")
ROADS = "中山人民解放建设和平胜利光明朝阳文化长江黄河新华东风团结幸福"
CHECK = "0123456789X"


def copy_blocks(n: int, seed: int, block: int = 20_000) -> Iterator[str]:
    """COPY text for rows 1..n, ``block`` rows at a time.

    Citizen IDs: area code + birth date + sequence + check digit. The check digit is
    (1 - 2 * int(first 17 digits, base 13)) mod 11, and that sum is linear in the three
    parts, so each part's share is computed once per distinct value (tables) and a row
    costs three look-ups."""
    rnd = random.Random(seed)
    counties = always_valid_counties()
    first = dt.date(1940, 1, 1).toordinal()
    dates = [dt.date.fromordinal(first + i).strftime("%Y%m%d")
             for i in range(dt.date(2005, 12, 31).toordinal() - first)]
    c_mod = [int(c, 13) * pow(13, 11, 11) % 11 for c in counties]
    d_mod = [int(d, 13) * pow(13, 3, 11) % 11 for d in dates]
    s_txt = [f"{s:03d}" for s in range(1000)]
    s_mod = [int(s, 13) % 11 for s in s_txt]
    nc, nd = len(counties), len(dates)
    ng, nr, ncity = len(GIVEN), len(ROADS), len(CITIES)
    base = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp())
    ts_cache: dict[int, str] = {}
    for start in range(1, n + 1, block):
        lines = []
        for i in range(start, min(n, start + block - 1) + 1):
            r = rnd.getrandbits(64)
            ci = r % nc
            r //= nc
            di = r % nd
            r //= nd
            si = r % 1000
            r = rnd.getrandbits(64)
            cid = counties[ci] + dates[di] + s_txt[si] + \
                CHECK[(1 - 2 * (c_mod[ci] + d_mod[di] + s_mod[si])) % 11]
            name = SURNAMES[r % len(SURNAMES)] + GIVEN[(r >> 6) % ng] + \
                (GIVEN[(r >> 12) % ng] if r & 1 else "")
            addr = (f"{CITIES[(r >> 18) % ncity]}{ROADS[(r >> 22) % nr]}"
                    f"{ROADS[(r >> 27) % nr]}路{(r >> 32) % 999 + 1}号"
                    f"{(r >> 42) % 30 + 1}栋{(r >> 47) % 6 + 1}单元{(r >> 50) % 2800 + 101}室")
            day = (r >> 20) % 730
            ts = ts_cache.get(day)
            if ts is None:
                ts = ts_cache[day] = dt.datetime.fromtimestamp(base - day * 86400, dt.UTC) \
                    .strftime("%Y-%m-%d")
            sec = (r >> 3) % 86400
            lines.append(f"{i}\t{name}\t{cid}\t{addr}\t{ts} "
                         f"{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}+00\n")
        yield "".join(lines)


def load_bureau(pg: PgInstance, n: int, seed: int) -> float:
    # the generator is checked against stdnum before anything is loaded
    sample = next(copy_blocks(min(n, 2000), seed)).splitlines()
    bad = [ln.split("\t")[2] for ln in sample if not ric.is_valid(ln.split("\t")[2])]
    if bad:
        raise BenchError(f"generated citizen IDs fail stdnum.cn.ric: {bad[:3]}")
    t0 = time.perf_counter()
    with pg.connect("exn") as c:
        c.execute(TABLE_DDL)
        with c.cursor() as cur, cur.copy(f"COPY people ({COLUMNS}) FROM STDIN") as cp:
            for blk in copy_blocks(n, seed):
                cp.write(blk)
        c.execute("VACUUM ANALYZE people")
    return time.perf_counter() - t0


def scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    return None if row is None else row[0]


# --- (a) native logical replication ---------------------------------------------------------

def native_initial(bureau: PgInstance, center: PgInstance, n: int, timeout: float,
                   pids: Any) -> dict:
    with center.connect("native") as c:
        c.execute(TABLE_DDL)
    with bureau.connect("exn") as b:
        b.execute("CREATE PUBLICATION exn_bench_pub FOR TABLE people")
    bureau.checkpoint()
    center.checkpoint()
    conninfo = f"host=127.0.0.1 port={bureau.port} user=postgres dbname=exn"
    visible_at = None
    with center.connect("native") as c:
        cpu0 = cpu_seconds(pids())
        t0 = time.time()
        c.execute(sql.SQL("CREATE SUBSCRIPTION exn_bench_sub CONNECTION {} "
                          "PUBLICATION exn_bench_pub").format(sql.Literal(conninfo)))
        try:
            while True:
                state = scalar(c, "SELECT sr.srsubstate FROM pg_subscription_rel sr "
                                  "JOIN pg_subscription s ON s.oid = sr.srsubid "
                                  "WHERE s.subname = 'exn_bench_sub'")
                if state in ("f", "s", "r") and visible_at is None \
                        and scalar(c, "SELECT count(*) FROM people") == n:
                    visible_at = time.time()
                if state == "r" and visible_at is not None:
                    t1 = time.time()
                    cpu1 = cpu_seconds(pids())
                    break
                if time.time() - t0 > timeout:
                    raise BenchError(f"native subscription not ready after {timeout:.0f} s "
                                     f"(state {state})")
                time.sleep(0.1)
            got = scalar(c, "SELECT count(*) FROM people")
        finally:
            c.execute("DROP SUBSCRIPTION IF EXISTS exn_bench_sub")
            with bureau.connect("exn") as b:
                b.execute("DROP PUBLICATION IF EXISTS exn_bench_pub")
            c.execute("DROP TABLE IF EXISTS people")
    if got != n:
        raise BenchError(f"native subscription copied {got} rows, not {n}")
    return {"seconds": t1 - t0, "visible_s": (visible_at or t1) - t0,
            "cpu": cpu_line(cpu0, cpu1)}


# --- (a) exnode initial load and (c) RSS -----------------------------------------------------

class RssSampler(threading.Thread):
    """Largest VmRSS (and VmHWM at the end) of some processes, sampled every 0.25 s."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak_kb = dict.fromkeys(pids, 0)
        self.series: dict[str, list[int]] = {n: [] for n in pids}  # VmRSS, kB
        self.stop_ev = threading.Event()

    @staticmethod
    def _read(pid: int) -> dict[str, int]:
        out = {}
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
        return out

    def sample(self) -> None:
        for node, pid in self.pids.items():
            v = self._read(pid)
            self.peak_kb[node] = max(self.peak_kb[node], v.get("VmRSS", 0), v.get("VmHWM", 0))
            self.series[node].append(v.get("VmRSS", 0))

    def run(self) -> None:
        while not self.stop_ev.wait(0.25):
            self.sample()

    def quarters(self, node: str) -> list[float]:
        """VmRSS (MB) at 25, 50, 75 and 100 % of the sampled time."""
        s = self.series[node] or [0]
        return [round(s[min(len(s) - 1, round(len(s) * q) - 1)] / 1024, 1) if len(s) > 1
                else round(s[0] / 1024, 1) for q in (0.25, 0.5, 0.75, 1.0)]

    def finish(self) -> dict[str, float]:
        self.stop_ev.set()
        self.join(5)
        self.sample()
        return {n: round(kb / 1024, 1) for n, kb in self.peak_kb.items()}


def applied_rows(c: psycopg.Connection[Any]) -> tuple[int, int]:
    """(rows, packages) the center applied for 'people' (marker table, committed with the
    data)."""
    if scalar(c, "SELECT to_regclass('exnode_applied')") is None:
        return 0, 0
    row = c.execute("SELECT coalesce(sum(row_count), 0), count(*) FROM exnode_applied "
                    "WHERE resource = 'people'").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def exnode_initial(star: LocalStar, bureau: PgInstance, center: PgInstance, n: int,
                   timeout: float, pids: Any) -> dict:
    bureau.checkpoint()
    center.checkpoint()
    rss = RssSampler({node: star.procs[node].pid for node in ("b1", "center")})
    rss.sample()
    before = {k: v for k, v in rss.peak_kb.items()}
    rss.start()
    with center.connect("exn") as c:
        cpu0 = cpu_seconds(pids())
        t0 = time.time()
        job = star.call("b1", "POST", "/sync/initial", {"resource": "people"})
        if job.get("status") not in ("running", "done"):
            raise BenchError(f"sync initial did not start: {job}")
        last_print = last_check = t0
        while True:
            got, packages = applied_rows(c)
            if got >= n:
                t1 = time.time()
                cpu1 = cpu_seconds(pids())
                break
            now = time.time()
            if now - t0 > timeout:
                raise BenchError(f"exnode initial load: {got} of {n} rows after "
                                 f"{timeout:.0f} s")
            if now - last_print >= 15:
                print(f"      ... {got:,} rows applied at the center after {now - t0:.0f} s",
                      flush=True)
                last_print = now
            if now - last_check >= 2:  # rarely: the control API shares b1's DB thread
                last_check = now
                for node in ("b1", "center"):
                    if star.procs[node].poll() is not None:
                        raise BenchError(f"{node} exited: {star.tail(node)}")
                failed = [j for j in star.call("b1", "GET", "/sync/jobs")
                          if j.get("status") == "failed"]
                if failed:
                    raise BenchError(f"initial load failed at b1: {failed[0].get('error')}")
            time.sleep(0.1)
        count = scalar(c, "SELECT count(*) FROM people")
    peak = rss.finish()
    if count != n:
        raise BenchError(f"the center's table has {count} rows, not {n}")
    jobs = star.call("b1", "GET", "/sync/jobs")
    return {"seconds": t1 - t0, "packages": packages, "rss_mb": peak,
            "cpu": cpu_line(cpu0, cpu1),
            "rss_quarters": {node: rss.quarters(node) for node in ("b1", "center")},
            "rss_idle_mb": {k: round(v / 1024, 1) for k, v in before.items()},
            "job": next((j for j in jobs if j.get("resource") == "people"), {})}


# --- (b) stream -------------------------------------------------------------------------------

class Generator(threading.Thread):
    """Updates ``tx_rows`` rows per autocommit transaction at ``rate`` rows/s, paced by the
    wall clock (a late transaction is sent at once, so the average rate holds)."""

    def __init__(self, dsn: str, n_rows: int, rate: float, tx_rows: int, seconds: float,
                 first_id: int) -> None:
        super().__init__(daemon=True)
        self.dsn, self.n_rows = dsn, n_rows
        self.rate, self.tx_rows, self.seconds = rate, tx_rows, seconds
        self.next_id = first_id
        self.committed = 0
        self.max_behind = 0.0
        self.t0 = self.t1 = 0.0
        self.error: BaseException | None = None
        self.stop_ev = threading.Event()
        self.started_ev = threading.Event()

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as c:
                stmt = "UPDATE people SET sent_at = %s, updated_at = now() WHERE id = ANY(%s)"
                c.execute("SELECT 1")
                tx_rate = self.rate / self.tx_rows
                total = max(1, int(self.seconds * tx_rate))
                self.t0 = time.time()
                self.started_ev.set()
                for k in range(total):
                    if self.stop_ev.is_set():
                        break
                    due = self.t0 + k / tx_rate
                    wait = due - time.time()
                    if wait > 0:
                        time.sleep(wait)
                    else:
                        self.max_behind = max(self.max_behind, -wait)
                    ids = [(self.next_id + j) % self.n_rows + 1 for j in range(self.tx_rows)]
                    self.next_id += self.tx_rows
                    cur = c.execute(stmt, (time.time(), ids))
                    self.committed += cur.rowcount
                self.t1 = max(time.time(), self.t0 + total / tx_rate)
        except BaseException as e:  # reported by the main thread
            self.error = e
        finally:
            self.started_ev.set()

    @property
    def achieved(self) -> float:
        return self.committed / (self.t1 - self.t0) if self.t1 > self.t0 else 0.0


def prepare_stream(star: LocalStar, bureau: PgInstance, center: PgInstance) -> None:
    """sent_at at both ends, the apply log at the center, continuous capture at b1."""
    star.stop("b1")
    star.stop("center")
    with bureau.connect("exn") as b:
        b.execute("ALTER TABLE people ADD COLUMN sent_at double precision")
    with center.connect("exn") as c:
        c.execute("ALTER TABLE people ADD COLUMN sent_at double precision")
        c.execute("CREATE TABLE bench_applied (id bigint, sent_at double precision, "
                  "applied_at double precision)")
        c.execute("CREATE FUNCTION bench_stamp() RETURNS trigger LANGUAGE plpgsql AS $$ "
                  "BEGIN IF NEW.sent_at IS NOT NULL THEN INSERT INTO bench_applied VALUES "
                  "(NEW.id, NEW.sent_at, extract(epoch FROM clock_timestamp())); END IF; "
                  "RETURN NULL; END $$")
        c.execute("CREATE TRIGGER bench_stamp AFTER INSERT OR UPDATE ON people "
                  "FOR EACH ROW EXECUTE FUNCTION bench_stamp()")
    path = star.config_path("b1")
    data = yaml.safe_load(path.read_text())
    data["resources"]["people"]["capture"]["schedule"] = {"continuous": True}
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    star.start("center")
    star.start("b1")
    star.wait_members("b1", set(star.nodes))


def wait_applied(c: psycopg.Connection[Any], since: float, want: int, timeout: float) -> int:
    deadline = time.time() + timeout
    while True:
        got = int(scalar(c, "SELECT count(*) FROM bench_applied WHERE sent_at >= %s",
                         (since,)))
        if got >= want or time.time() > deadline:
            return got
        time.sleep(0.2)


def window_avg(series: list[tuple[float, float]], t_from: float, t_to: float) -> float:
    vals = [v for t, v in series if t_from <= t < t_to]
    return statistics.fmean(vals) if vals else float("nan")


def slope(series: list[tuple[float, float]]) -> float:
    if len(series) < 3:
        return 0.0
    xs = [t for t, _ in series]
    ys = [v for _, v in series]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def stream(star: LocalStar, bureau: PgInstance, center: PgInstance, n: int, args: Any,
           pids: Any) -> dict:
    prepare_stream(star, bureau, center)
    with center.connect("exn") as c, bureau.connect("exn") as b:
        # warm-up: one transaction through every path before the clock runs
        t_w = time.time()
        b.execute("UPDATE people SET sent_at = %s WHERE id = ANY(%s)",
                  (t_w, list(range(1, min(n, args.tx_rows) + 1))))
        if wait_applied(c, t_w, min(n, args.tx_rows), 60) < min(n, args.tx_rows):
            raise BenchError(f"warm-up updates did not reach the center: {star.tail('b1')}")
        first_id = min(n, args.tx_rows)
        gen = Generator(bureau.dsn("exn"), n, args.rate, args.tx_rows, args.stream_seconds,
                        first_id)
        gen.start()
        try:
            return _run_stream(star, b, c, gen, args, pids)
        finally:
            gen.stop_ev.set()
            gen.join(30)


def _run_stream(star: LocalStar, b: psycopg.Connection[Any], c: psycopg.Connection[Any],
                gen: Generator, args: Any, pids: Any) -> dict:
    gen.started_ev.wait(30)
    t0 = gen.t0
    cpu0 = cpu_seconds(pids())
    series: dict[str, list[tuple[float, float]]] = {"changes": [], "outbox": [],
                                                    "in_flight": []}
    errors: set[str] = set()
    last_print = time.time()
    while gen.is_alive():
        time.sleep(max(0.0, 1.0 - (time.time() - t0) % 1.0))
        now = time.time()
        sent = gen.committed
        changes = int(scalar(b, "SELECT count(*) FROM exnode_changes"))
        st = star.status("b1")
        applied = int(scalar(c, "SELECT count(*) FROM bench_applied WHERE sent_at >= %s",
                             (t0,)))
        rel = now - t0
        series["changes"].append((rel, changes))
        series["outbox"].append((rel, st["outbox_pending"]))
        series["in_flight"].append((rel, sent - applied))
        errors.update(r["error"] for r in st["resources"] if r.get("error"))
        if now - last_print >= 10:
            print(f"      ... {rel:4.0f} s: {sent:,} updates committed, {applied:,} "
                  f"applied, change table {changes:,}, outbox {st['outbox_pending']}",
                  flush=True)
            last_print = now
    gen.join()
    cpu1 = cpu_seconds(pids())
    if gen.error is not None:
        raise BenchError(f"load generator failed: {gen.error!r}")
    t_end = time.time()
    got = wait_applied(c, t0, gen.committed, args.drain_timeout)
    drain = time.time() - t_end
    rows = c.execute("SELECT (applied_at - sent_at) * 1000, sent_at FROM bench_applied "
                     "WHERE sent_at >= %s", (t0,)).fetchall()
    lat = [r[0] for r in rows]
    sent_times = [r[1] for r in rows]
    if not lat:
        raise BenchError("no update reached the center")
    dur = args.stream_seconds
    win = min(10.0, dur / 3)
    trend = {}
    growing = False
    for name, s in series.items():
        first, last = window_avg(s, 0, win), window_avg(s, dur - win, dur + 1)
        sl = slope(s)
        trend[name] = {"first": first, "last": last, "slope_per_s": sl}
    # growing: the committed-but-unapplied updates (or the change table) rise steadily by
    # more than half a second of input over the run, or the outbox keeps filling
    for name, unit in (("in_flight", args.rate), ("changes", args.rate)):
        t = trend[name]
        if t["slope_per_s"] * dur > 0.5 * unit and t["last"] > 1.5 * t["first"] + 0.1 * unit:
            growing = True
    t = trend["outbox"]
    if t["slope_per_s"] * dur > 8 and t["last"] > 1.5 * t["first"] + 4:
        growing = True
    qs = statistics.quantiles(lat, n=100, method="inclusive")
    head = [v for v, st_ in zip(lat, sent_times, strict=True) if st_ - t0 < win]
    tail = [v for v, st_ in zip(lat, sent_times, strict=True) if st_ - t0 >= dur - win]
    return {"achieved": gen.achieved, "committed": gen.committed, "applied": got,
            "max_behind_ms": gen.max_behind * 1000, "p50_ms": qs[49], "p99_ms": qs[98],
            "max_ms": max(lat), "drain_s": drain, "trend": trend,
            "cpu": cpu_line(cpu0, cpu1),
            "backlog": "growing" if growing else "stable", "errors": sorted(errors),
            "p50_first_ms": statistics.median(head) if head else float("nan"),
            "p50_last_ms": statistics.median(tail) if tail else float("nan"),
            "rss_mb": {node: round(RssSampler._read(star.procs[node].pid).get("VmHWM", 0)
                                   / 1024, 1) for node in ("b1", "center")}}


# --- main -----------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _interrupt(_sig: int, _frame: Any) -> None:
    # Our own handler, not signal.default_int_handler: asyncio.run() (used by exnode's
    # enrolment) swaps the default one for task cancellation, which can get lost.
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the initial load")
    ap.add_argument("--chunk-rows", type=int, default=10_000, help="rows per package (b1)")
    ap.add_argument("--stream-seconds", type=float, default=60.0,
                    help="length of the update stream (0: skip it)")
    ap.add_argument("--rate", type=float, default=5000.0, help="row updates per second")
    ap.add_argument("--tx-rows", type=int, default=50, help="rows per transaction")
    ap.add_argument("--drain-timeout", type=float, default=180.0,
                    help="how long to wait for the stream's last updates at the center")
    ap.add_argument("--seed", type=int, default=20261101)
    args = ap.parse_args()
    if args.rows < max(1, args.tx_rows):
        ap.error("--rows must be at least --tx-rows")
    if os.geteuid() != 0:
        ap.error("run as root: initdb and postgres are started as the postgres user")
    if shutil.which("mosquitto") is None:
        raise SystemExit("bench: mosquitto is not installed")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # even if started with SIGINT ignored
    bindir = pg_bindir()
    root = Path(tempfile.mkdtemp(prefix="exn-bench-sync-", dir="/tmp"))
    root.chmod(0o711)  # the postgres user reaches its data dirs inside
    bureau, center = PgInstance(root, "bureau", bindir), PgInstance(root, "center", bindir)
    broker: subprocess.Popen[bytes] | None = None
    star: LocalStar | None = None
    n = args.rows
    out: dict[str, Any] = {"bench": "sync", "cpus": os.cpu_count(), "rows": n,
                           "loadavg_start": round(os.getloadavg()[0], 2)}
    code = 0
    try:
        bureau.start()
        center.start()
        for pg in (bureau, center):
            pg.create_db("exn")
        center.create_db("native")
        with center.connect("exn") as c:
            c.execute(TABLE_DDL)
        load_s = load_bureau(bureau, n, args.seed)
        broker, mport = start_mosquitto(root)
        print(f"exnode bench-sync: PostgreSQL {bureau.version} (throwaway: bureau "
              f":{bureau.port}, center :{center.port}), mosquitto :{mport}, "
              f"{os.cpu_count()} CPUs, load average {out['loadavg_start']:.2f} at start")
        print(f"    bureau table: {n:,} rows COPY-loaded in {load_s:.1f} s "
              f"(valid citizen IDs)", flush=True)

        timeout = max(600.0, n / 500)
        print(f"(a) initial load of {n:,} rows bureau -> center", flush=True)
        def pids() -> dict[str, int]:
            out = {node: p.pid for node, p in (star.procs.items() if star else ())}
            for name, p in (("pg bureau", bureau.proc), ("pg center", center.proc),
                            ("mosquitto", broker)):
                if p is not None:
                    out[name] = p.pid
            return out

        nat = native_initial(bureau, center, n, timeout, pids)
        print(f"    native logical replication : {nat['seconds']:8.2f} s "
              f"{n / nat['seconds']:>10,.0f} rows/s  (rows visible after "
              f"{nat['visible_s']:.2f} s, state 'r' after {nat['seconds']:.2f} s)")
        print(f"      CPU s: {nat['cpu']}", flush=True)

        res = {"database": "db", "table": "people", "key": ["id"], "owner": "b1"}
        star = LocalStar(
            root / "star", "127.0.0.1", mport, bureaus=("b1",),
            settings={"log": {"level": "warning"}, "broker": {"session_expiry_s": 300}},
            node_settings={
                "b1": {"databases": {"db": {"url": bureau.url("exn")}},
                       "resources": {"people": {**res, "capture": {
                           "strategy": "trigger", "schedule": {"every": "24h"},
                           "chunk_rows": args.chunk_rows}}}},
                "center": {"databases": {"db": {"url": center.url("exn")}},
                           "resources": {"people": dict(res)}}})
        star.init()
        r = star.cli("b1", "capture", "install", "people")
        if r.returncode != 0:
            raise BenchError(f"exnode capture install people: {r.stderr.strip()}")
        star.up()
        exn = exnode_initial(star, bureau, center, n, timeout, pids)
        ratio = exn["seconds"] / nat["seconds"]
        print(f"    exnode b1 -> center        : {exn['seconds']:8.2f} s "
              f"{n / exn['seconds']:>10,.0f} rows/s  ({exn['packages']} packages of "
              f"{args.chunk_rows:,} rows)")
        print(f"      CPU s: {exn['cpu']}")
        print(f"    ratio exnode / native      : {ratio:8.2f}    target <= {TARGET_RATIO:g}  "
              f"{verdict(ratio <= TARGET_RATIO)}")
        rss = exn["rss_mb"]
        print(f"(c) peak RSS during (a)        : b1 {rss['b1']:.0f} MB, center "
              f"{rss['center']:.0f} MB (idle before: b1 {exn['rss_idle_mb']['b1']:.0f}, "
              f"center {exn['rss_idle_mb']['center']:.0f})    target <= {TARGET_RSS_MB:.0f} MB"
              f" per node  {verdict(max(rss.values()) <= TARGET_RSS_MB)}")
        for node in ("b1", "center"):
            q = " -> ".join(f"{v:.0f}" for v in exn["rss_quarters"][node])
            print(f"      {node} RSS at 25/50/75/100 % of the load: {q} MB")
        sys.stdout.flush()
        out.update({"chunk_rows": args.chunk_rows,
                    "exnode_initial_s": round(exn["seconds"], 2),
                    "native_initial_s": round(nat["seconds"], 2), "ratio": round(ratio, 3),
                    "exnode_rows_per_s": round(n / exn["seconds"]),
                    "native_rows_per_s": round(n / nat["seconds"])})

        if args.stream_seconds > 0:
            print(f"(b) update stream at b1: {args.rate:,.0f} rows/s for "
                  f"{args.stream_seconds:g} s, {args.tx_rows} rows per transaction, trigger "
                  "capture (continuous, LISTEN/NOTIFY)", flush=True)
            s = stream(star, bureau, center, n, args, pids)
            print(f"    achieved rate              : {s['achieved']:8,.0f} rows/s "
                  f"({s['committed']:,} updates; at most {s['max_behind_ms']:.0f} ms behind "
                  "schedule)")
            p_ok = s["p50_ms"] <= TARGET_P50_MS and s["p99_ms"] <= TARGET_P99_MS
            print(f"    commit -> applied latency  : p50 {s['p50_ms']:.0f} ms, p99 "
                  f"{s['p99_ms']:.0f} ms, max {s['max_ms']:.0f} ms    target p50 <= "
                  f"{TARGET_P50_MS:.0f} ms, p99 <= {TARGET_P99_MS:.0f} ms  {verdict(p_ok)}")
            print(f"      CPU s while streaming: {s['cpu']}")
            print(f"      p50 in the first / last {min(10.0, args.stream_seconds / 3):.0f} s: "
                  f"{s['p50_first_ms']:.0f} / {s['p50_last_ms']:.0f} ms")
            tr = s["trend"]
            print("    backlog, first -> last avg : change table "
                  f"{tr['changes']['first']:,.0f} -> {tr['changes']['last']:,.0f} rows, "
                  f"outbox {tr['outbox']['first']:.1f} -> {tr['outbox']['last']:.1f} packages, "
                  f"committed-not-applied {tr['in_flight']['first']:,.0f} -> "
                  f"{tr['in_flight']['last']:,.0f}  => {s['backlog']}    target stable  "
                  f"{verdict(s['backlog'] == 'stable')}")
            print(f"    after the stream           : {s['applied']:,} of {s['committed']:,} "
                  f"updates applied, drained in {s['drain_s']:.1f} s; peak RSS b1 "
                  f"{s['rss_mb']['b1']:.0f} MB, center {s['rss_mb']['center']:.0f} MB")
            if s["errors"]:
                print(f"    resource errors seen at b1 : {'; '.join(s['errors'])}")
            if s["applied"] < s["committed"]:
                code = 1
                out["error"] = (f"{s['committed'] - s['applied']} stream updates never "
                                "reached the center")
            out.update({"stream_rate": round(s["achieved"], 1),
                        "stream_seconds": args.stream_seconds,
                        "p50_ms": round(s["p50_ms"], 1), "p99_ms": round(s["p99_ms"], 1),
                        "max_ms": round(s["max_ms"], 1), "backlog": s["backlog"],
                        "drain_s": round(s["drain_s"], 2)})
        out["rss_mb"] = rss
        out["loadavg_end"] = round(os.getloadavg()[0], 2)
        print(f"    load average {out['loadavg_end']:.2f} at the end (other work on this "
              "machine shares its CPUs)")
    except BenchError as e:
        print(f"bench-sync failed: {e}", file=sys.stderr)
        out["error"] = str(e)
        code = 1
    except KeyboardInterrupt:
        print("bench-sync interrupted; cleaning up", file=sys.stderr)
        out["error"] = "interrupted"
        code = 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        if star is not None:
            with contextlib.suppress(Exception):
                star.close()
        if broker is not None:
            broker.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                broker.wait(10)
            if broker.poll() is None:
                broker.kill()
        for pg in (bureau, center):
            with contextlib.suppress(Exception):
                pg.stop()
        shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    print(json.dumps(out))
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
