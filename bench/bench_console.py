"""make bench-console: the web console's overview page and catalog search at a large center
(issue 11: p95 within 200 ms with 1,000 members, 5,000 resources and 10 million
exchange-log rows in a PostgreSQL state DB).

A real ``exnode run`` center on a Mosquitto of our own, its state DB a database of the
local PostgreSQL (127.0.0.1:5432, ``exnode_bench_console``), filled once and kept for
the next run (its folder too: the CA that issued the members' certificates and the
signed log head belong with it; ``--fresh`` rebuilds both):

- members: approved bureaus, each with real Ed25519/X25519 keys and a certificate from
  the center's CA (the center checks them when it builds its directory), and ``peers``
  rows: most heard from within the last minutes, some hours or days ago, some never;
- catalog: entries with Chinese names, abstracts, keywords and data elements, stored with
  the catalog's own ``store()`` (versions, seq, search text), providers among the members;
- exchange log: rows spread over 90 days (INSERT ... SELECT generate_series: relayed,
  sent, applied, receipts, a few refusals; kinds, peers, resources and sizes varied),
  prev_hash linking each row to the one before; the signed head names the last row.

Then a console account logs in over HTTPS and K sequential GETs of ``/`` (the overview)
and of ``/catalog?q=TERM`` for several terms are timed; so are the control routes the
pages call, over the control socket, to show the console's own share. Prints p50 / p95 /
p99 / max beside the 200 ms target (and their ratio), then one JSON line.

    .venv/bin/python bench/bench_console.py [--requests K] [--fresh]
        [--members N] [--resources R] [--log-rows L]

(``EXNODE_BENCH_DB`` names another database, ``EXNODE_BENCH_CACHE`` another parent
folder for the center's, e.g. for a small trial beside the kept full-size one.)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cbor2
import httpx
import psycopg
import yaml
from benchlib import start_mosquitto
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from sqlalchemy import Engine

from exnode.node.app.client import call
from exnode.node.base.config import load_config
from exnode.node.kernel import exlog, registry
from exnode.node.kernel import identity as idn
from exnode.node.kernel.state import members as members_t
from exnode.node.kernel.state import meta, open_state, peers
from exnode.node.tools.broker import free_port
from exnode.node.tools.cluster import exnode_cmd, wait_until
from exnode.plugins.builtin.catalog import store as catalog_store

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DBNAME = os.environ.get("EXNODE_BENCH_DB", "exnode_bench_console")
DSN = f"postgresql://postgres@127.0.0.1:5432/{DBNAME}"
CACHE = Path(os.environ.get("EXNODE_BENCH_CACHE", tempfile.gettempdir())) / DBNAME
MARKER = "bench_console"
TARGET_P95_MS = 200.0
ACCOUNTS = {"bench-admin": ("sysadmin", "Bench-4412-kkLp!"),
            "bench-sec": ("secadmin", "Bench-5523-mmNb!"),
            "bench-aud": ("auditor", "Bench-7788-zzXc!")}
TERMS = ("人口", "营业执照", "社保", "A01", "人", "不动产登记", "朝阳区 婚姻", "xm")

# --- the data set ----------------------------------------------------------------------------

DISTRICTS = [("dc", "东城区"), ("xc", "西城区"), ("cy", "朝阳区"), ("hd", "海淀区"),
             ("ft", "丰台区"), ("sjs", "石景山区"), ("tz", "通州区"), ("sy", "顺义区"),
             ("cp", "昌平区"), ("dx", "大兴区"), ("fs", "房山区"), ("mtg", "门头沟区"),
             ("hr", "怀柔区"), ("pg", "平谷区"), ("my", "密云区"), ("yq", "延庆区")]

# department code, name, classification, topics (name, keywords, element codes)
DEPTS: list[tuple[str, str, str, list[tuple[str, list[str], list[str]]]]] = [
    ("gaj", "公安局", "A01", [
        ("人口基本信息", ["人口", "户籍", "身份证"], ["xm", "gmsfhm", "xb", "csrq", "mz", "hjdz"]),
        ("户籍迁移信息", ["户籍", "迁移", "人口"], ["xm", "gmsfhm", "qcd", "qrd", "qyrq"]),
        ("居民身份证办理信息", ["身份证", "证照"], ["xm", "gmsfhm", "zjhm", "fzrq", "yxqz"]),
        ("机动车登记信息", ["机动车", "车辆"], ["hphm", "cllx", "syr", "djrq"]),
        ("驾驶人信息", ["驾驶证", "驾驶人"], ["xm", "gmsfhm", "zjcx", "fzrq"])]),
    ("scjgj", "市场监督管理局", "A02", [
        ("企业营业执照信息", ["营业执照", "企业", "法人"],
         ["tyshxydm", "qymc", "fddbr", "zczb", "clrq", "jyfw", "djjg"]),
        ("个体工商户营业执照信息", ["营业执照", "个体工商户"],
         ["tyshxydm", "qymc", "jyz", "jycs", "clrq"]),
        ("食品经营许可证信息", ["食品", "许可证"], ["xkzbh", "qymc", "jyxm", "yxqz"]),
        ("企业年度报告信息", ["年报", "企业"], ["tyshxydm", "qymc", "nbnd", "zcze"]),
        ("市场监管行政处罚信息", ["行政处罚", "信用"], ["cfjdsh", "qymc", "cfnr", "cfrq"])]),
    ("rsj", "人力资源和社会保障局", "A01", [
        ("社保参保信息", ["社保", "参保", "养老保险"], ["xm", "gmsfhm", "sbkh", "cbzt", "cbrq"]),
        ("养老保险缴费信息", ["社保", "养老保险", "缴费"], ["gmsfhm", "jfjs", "jfyf", "dwmc"]),
        ("失业保险金发放信息", ["失业保险", "社保"], ["xm", "gmsfhm", "ffje", "ffyf"]),
        ("就业登记信息", ["就业", "劳动"], ["xm", "gmsfhm", "dwmc", "jyrq"]),
        ("职业资格证书信息", ["证书", "职业资格"], ["xm", "zsbh", "fzrq", "zsmc"])]),
    ("mzj", "民政局", "A01", [
        ("婚姻登记信息", ["婚姻", "登记"], ["xm", "gmsfhm", "djlx", "djrq", "djjg"]),
        ("最低生活保障对象信息", ["低保", "救助"], ["xm", "gmsfhm", "bzje", "bzrq"]),
        ("社会组织登记信息", ["社会组织", "登记"], ["tyshxydm", "zzmc", "fddbr", "clrq"]),
        ("养老机构信息", ["养老", "机构"], ["jgmc", "jgdz", "cws", "lxdh"])]),
    ("wjw", "卫生健康委员会", "A01", [
        ("出生医学证明信息", ["出生", "医学证明", "人口"], ["xm", "xb", "csrq", "zmbh"]),
        ("死亡医学证明信息", ["死亡", "医学证明", "人口"], ["xm", "gmsfhm", "swrq", "zmbh"]),
        ("医疗机构执业许可信息", ["医疗机构", "许可证"], ["jgmc", "xkzbh", "yxqz"]),
        ("预防接种信息", ["疫苗", "接种"], ["xm", "gmsfhm", "ymmc", "jzrq"])]),
    ("jyj", "教育局", "B03", [
        ("中小学学籍信息", ["学籍", "学生"], ["xm", "gmsfhm", "xxmc", "rxrq"]),
        ("教师资格证信息", ["教师", "资格证"], ["xm", "zsbh", "rjxk", "fzrq"]),
        ("学校基本信息", ["学校", "教育"], ["xxmc", "xxdz", "bxlx"])]),
    ("zrzyj", "规划和自然资源委员会", "A03", [
        ("不动产登记信息", ["不动产登记", "房屋", "土地"], ["bdcdyh", "fwzl", "jzmj", "qlr"]),
        ("国有建设用地出让信息", ["土地", "出让"], ["dkbh", "crmj", "crjk"]),
        ("建设工程规划许可信息", ["规划", "许可证"], ["xkzbh", "xmmc", "jsdw"])]),
    ("zjw", "住房和城乡建设委员会", "B05", [
        ("商品房网签备案信息", ["房屋", "网签", "备案"], ["htbh", "fwzl", "jzmj", "qlr"]),
        ("建筑业企业资质信息", ["资质", "企业"], ["tyshxydm", "qymc", "zzdj"]),
        ("住房公积金缴存信息", ["公积金", "缴存"], ["xm", "gmsfhm", "jcjs", "jcyf"])]),
    ("swj", "税务局", "A02", [
        ("纳税人登记信息", ["纳税人", "税务", "企业"], ["tyshxydm", "nsrmc", "djrq"]),
        ("纳税信用等级信息", ["纳税信用", "信用"], ["tyshxydm", "nsrmc", "xydj", "pdnd"]),
        ("欠税公告信息", ["欠税", "税务"], ["tyshxydm", "nsrmc", "qsje"])]),
    ("ybj", "医疗保障局", "A01", [
        ("医保参保信息", ["医保", "参保", "社保"], ["xm", "gmsfhm", "cbzt", "cbrq"]),
        ("医保结算信息", ["医保", "结算"], ["gmsfhm", "jsje", "jsrq", "yljg"]),
        ("定点医药机构信息", ["医保", "定点机构"], ["jgmc", "jgdm", "jgdz"])]),
    ("jtw", "交通委员会", "B07", [
        ("道路运输经营许可信息", ["道路运输", "许可证"], ["xkzbh", "qymc", "jyfw"]),
        ("出租汽车营运信息", ["出租车", "营运"], ["hphm", "qymc", "yyzh"])]),
    ("sthjj", "生态环境局", "B09", [
        ("排污许可信息", ["排污", "许可证", "环境"], ["xkzbh", "qymc", "pwlx", "yxqz"]),
        ("环境行政处罚信息", ["行政处罚", "环境"], ["cfjdsh", "qymc", "cfnr", "cfrq"])]),
]

ELEMENTS = {
    "xm": ("姓名", "varchar", 50), "gmsfhm": ("公民身份号码", "char", 18),
    "xb": ("性别", "char", 1), "csrq": ("出生日期", "date", None), "mz": ("民族", "varchar", 20),
    "hjdz": ("户籍地址", "varchar", 200), "qcd": ("迁出地", "varchar", 200),
    "qrd": ("迁入地", "varchar", 200), "qyrq": ("迁移日期", "date", None),
    "zjhm": ("证件号码", "varchar", 30), "fzrq": ("发证日期", "date", None),
    "yxqz": ("有效期至", "date", None), "hphm": ("号牌号码", "varchar", 10),
    "cllx": ("车辆类型", "varchar", 20), "syr": ("所有人", "varchar", 100),
    "djrq": ("登记日期", "date", None), "zjcx": ("准驾车型", "varchar", 10),
    "tyshxydm": ("统一社会信用代码", "char", 18), "qymc": ("企业名称", "varchar", 200),
    "fddbr": ("法定代表人", "varchar", 50), "zczb": ("注册资本", "numeric", 18),
    "clrq": ("成立日期", "date", None), "jyfw": ("经营范围", "text", None),
    "djjg": ("登记机关", "varchar", 100), "jyz": ("经营者", "varchar", 50),
    "jycs": ("经营场所", "varchar", 200), "xkzbh": ("许可证编号", "varchar", 50),
    "jyxm": ("经营项目", "varchar", 200), "nbnd": ("年报年度", "integer", None),
    "zcze": ("资产总额", "numeric", 18), "cfjdsh": ("处罚决定书文号", "varchar", 100),
    "cfnr": ("处罚内容", "text", None), "cfrq": ("处罚日期", "date", None),
    "sbkh": ("社会保障卡号", "varchar", 20), "cbzt": ("参保状态", "varchar", 10),
    "cbrq": ("参保日期", "date", None), "jfjs": ("缴费基数", "numeric", 12),
    "jfyf": ("缴费月份", "char", 6), "dwmc": ("单位名称", "varchar", 200),
    "ffje": ("发放金额", "numeric", 12), "ffyf": ("发放月份", "char", 6),
    "jyrq": ("就业日期", "date", None), "zsbh": ("证书编号", "varchar", 50),
    "zsmc": ("证书名称", "varchar", 100), "djlx": ("登记类型", "varchar", 10),
    "bzje": ("保障金额", "numeric", 12), "bzrq": ("保障起始日期", "date", None),
    "zzmc": ("组织名称", "varchar", 200), "jgmc": ("机构名称", "varchar", 200),
    "jgdz": ("机构地址", "varchar", 200), "cws": ("床位数", "integer", None),
    "lxdh": ("联系电话", "varchar", 20), "zmbh": ("证明编号", "varchar", 30),
    "swrq": ("死亡日期", "date", None), "ymmc": ("疫苗名称", "varchar", 100),
    "jzrq": ("接种日期", "date", None), "xxmc": ("学校名称", "varchar", 200),
    "rxrq": ("入学日期", "date", None), "rjxk": ("任教学科", "varchar", 50),
    "xxdz": ("学校地址", "varchar", 200), "bxlx": ("办学类型", "varchar", 20),
    "bdcdyh": ("不动产单元号", "char", 28), "fwzl": ("房屋坐落", "varchar", 200),
    "jzmj": ("建筑面积", "numeric", 10), "qlr": ("权利人", "varchar", 100),
    "dkbh": ("地块编号", "varchar", 50), "crmj": ("出让面积", "numeric", 12),
    "crjk": ("出让价款", "numeric", 18), "xmmc": ("项目名称", "varchar", 200),
    "jsdw": ("建设单位", "varchar", 200), "htbh": ("合同编号", "varchar", 50),
    "zzdj": ("资质等级", "varchar", 20), "jcjs": ("缴存基数", "numeric", 12),
    "jcyf": ("缴存月份", "char", 6), "nsrmc": ("纳税人名称", "varchar", 200),
    "xydj": ("信用等级", "char", 1), "pdnd": ("评定年度", "integer", None),
    "qsje": ("欠税金额", "numeric", 18), "jsje": ("结算金额", "numeric", 12),
    "jsrq": ("结算日期", "date", None), "yljg": ("医疗机构", "varchar", 200),
    "jgdm": ("机构代码", "varchar", 20), "yyzh": ("营运证号", "varchar", 30),
    "pwlx": ("排污类型", "varchar", 50),
}
VARIANTS = [("", "（全量）", "每日"), ("_zl", "（增量）", "每小时"), ("_ls", "（历史）", "每年"),
            ("_yd", "（月度汇总）", "每月"), ("_nd", "（年度统计）", "每年"),
            ("_jd", "（季度统计）", "每季度"), ("_cx", "（查询核验）", "实时"),
            ("_gx", "（共享交换）", "每日")]
EVENT_MIX = [  # weight, event, kind, status, reason, relayed, typical size
    (25, "relayed", "rows", "ok", "", True, 48_000), (5, "relayed", "zero", "ok", "", True, 900),
    (4, "relayed", "query-req", "ok", "", True, 700),
    (6, "relayed", "query-page", "ok", "", True, 220_000),
    (4, "relayed", "check-req", "ok", "", True, 3_000),
    (4, "relayed", "check-res", "ok", "", True, 1_200),
    (12, "receipt", "rows", "applied", "", False, 0),
    (6, "applied", "health", "ok", "", False, 1_500),
    (5, "applied", "log-head", "ok", "", False, 300),
    (3, "witness", "log-head", "ok", "", False, 300),
    (2, "applied", "catalog-pub", "ok", "", False, 6_000),
    (1, "applied", "access-req", "ok", "", False, 1_000),
    (6, "sent", "health", "ok", "", False, 2_500), (3, "sent", "catalog", "ok", "", False, 9_000),
    (2, "sent", "log-witness", "ok", "", False, 300),
    (2, "sent", "broker-login", "ok", "", False, 400),
    (2, "applied", "broker-login-ok", "ok", "", False, 200),
    (3, "receipt", "query-page", "applied", "", False, 0),
    (1, "refused", "query-req", "refused", "no grant in force for query", False, 700),
    (1, "refused", "rows", "refused", "sequence already applied", False, 40_000),
    (1, "duplicate", "rows", "ok", "", False, 40_000),
    (1, "expired", "query-page", "expired", "package expired unreceipted", False, 200_000),
    (1, "deferred", "rows", "waiting", "waits for an earlier sequence", False, 40_000),
]
LOG_DAYS = 90


def member_ids(n: int) -> tuple[list[str], list[str]]:
    """``n`` bureau ids: the departments of each district (the providers) and the
    street offices (街道/乡镇, consumers) up to ``n``; returns (all, providers)."""
    providers = [f"{d}-{c}" for c, _ in DISTRICTS for d, *_ in DEPTS]
    providers += [f"{d}-city" for d, *_ in DEPTS]
    providers = providers[:n]
    streets = [f"jd-{DISTRICTS[i % len(DISTRICTS)][0]}-{i // len(DISTRICTS) + 1:03d}"
               for i in range(n - len(providers))]
    return providers + streets, providers


def contact_offset(i: int) -> float | None:
    """Seconds since member ``i`` was last heard from (None: never): most within the
    last two minutes, one in ten hours to a week ago, one in twenty never."""
    r = random.Random(i * 7919)
    u = r.random()
    if u < 0.85:
        return r.uniform(1, 110)
    if u < 0.95:
        return r.uniform(1800, 7 * 86400)
    return None


def catalog_docs(n: int, providers: list[str]) -> list[dict[str, Any]]:
    rnd = random.Random(11)
    combos = [(dept, topic, dist, var) for dept in DEPTS for topic in dept[3]
              for dist in [*DISTRICTS, ("city", "全市")] for var in VARIANTS]
    rnd.shuffle(combos)
    if n > len(combos):
        raise SystemExit(f"bench: at most {len(combos)} distinct catalog entries")
    docs = []
    for j, ((dcode, dname, cls, _), (tname, kws, els), (dist, dist_name), var) in \
            enumerate(combos[:n]):
        owner = f"{dcode}-{dist}"
        if owner not in providers:
            owner = providers[j % len(providers)]
        rid = f"{dcode}_{dist}_{j:04d}{var[0]}"
        region = "北京市" + (dist_name if dist != "city" else "")
        name = f"{region}{tname}{var[1]}"
        sub = f"{cls}{rnd.randint(1, 12):02d}"
        elements = [{"name": e, "cn_name": ELEMENTS[e][0], "type": ELEMENTS[e][1],
                     "length": ELEMENTS[e][2], "description": f"{ELEMENTS[e][0]}（{dname}）",
                     "standard": "GB 11643" if e == "gmsfhm" else None} for e in els]
        docs.append({
            "resource": rid, "provider_node": owner, "name": name,
            "abstract": f"{region}{dname}{tname[:-2]}数据，{var[2]}更新，用于政务服务"
                        f"{rnd.choice(['一网通办', '跨部门核验', '统计分析', '联合监管'])}。",
            "provider": f"{region}{dname}", "classification": sub,
            "resource_id": f"{sub}/{rid}", "metadata_id": f"{sub}/{rid}#md",
            "format": rnd.choice(["数据库", "接口", "电子文件"]),
            "keywords": [*kws, dist_name] + (["历史"] if var[0] == "_ls" else []),
            "share": rnd.choice(["unconditional", "conditional", "conditional", "none"]),
            "share_condition": "经审核后共享" if rnd.random() < 0.5 else None,
            "open_type": rnd.choice(["不予开放", "有条件开放", "无条件开放"]),
            "update_frequency": var[2], "release_date": f"20{rnd.randint(18, 25)}-0"
                                                        f"{rnd.randint(1, 9)}-1{rnd.randint(0, 9)}",
            "online_address": None, "held_at": rnd.choice(["owner", "center"]),
            "publish_days": rnd.choice([None, 5, 10]), "key": [els[0]], "elements": elements,
        })
    return docs


def fill_members(eng: Engine, ident: idn.Identity, ids: list[str]) -> None:
    ca = ident.ca_cert
    assert ca is not None
    ca_key = ident.ca_key()
    now = time.time()
    rows = []
    for i, m in enumerate(ids):
        sign = idn.raw_public(ed25519.Ed25519PrivateKey.generate().public_key())
        enc = idn.raw_public(x25519.X25519PrivateKey.generate().public_key())
        cert = idn.issue_cert(ca_key, ca, m, "bureau", sign, enc)
        serial = str(idn.x509.load_der_x509_certificate(cert).serial_number)
        t = now - 86400 * (400 - i * 0.3)
        rows.append({"id": m, "role": "bureau", "status": "approved", "sign_pub": sign,
                     "enc_pub": enc, "cert": cert, "serial": serial, "requested_at": t,
                     "updated_at": t + 3600})
    with eng.begin() as conn:
        conn.execute(members_t.insert(), rows)


def refresh_contacts(eng: Engine, ids: list[str]) -> tuple[int, int]:
    """Set ``peers`` as of now (a kept data set would otherwise age into silence);
    returns (heard from in the last two minutes, heard from at all)."""
    now = time.time()
    rows = []
    for i, m in enumerate(ids):
        off = contact_offset(i)
        if off is not None:
            rows.append({"node_id": m, "last_contact": now - off,
                         "last_rtt_ms": round(random.Random(i).uniform(4, 90), 1)})
    with eng.begin() as conn:
        conn.execute(peers.delete())
        conn.execute(peers.insert(), rows)
    return sum(1 for r in rows if now - r["last_contact"] < 120), len(rows)


def fill_catalog(eng: Engine, docs: list[dict[str, Any]]) -> None:
    with eng.begin() as conn:
        for d in docs:
            catalog_store.store(conn, d)


def fill_log(dsn: str, ident: idn.Identity, n: int, ids: list[str], rids: list[str],
             step: int = 1_000_000) -> None:
    """``n`` exchange-log rows over the last 90 days, then the signed head on the last."""
    mix = [row for w, *row in EVENT_MIX for _ in range(w)]
    t1 = time.time() - 600
    t0 = t1 - LOG_DAYS * 86400
    with psycopg.connect(dsn) as c:
        c.execute("CREATE TEMP TABLE b_peer (n int PRIMARY KEY, id text)")
        c.execute("CREATE TEMP TABLE b_res (n int PRIMARY KEY, id text)")
        c.execute("CREATE TEMP TABLE b_ev (n int PRIMARY KEY, event text, kind text, "
                  "status text, reason text, relayed bool, size int)")
        with c.cursor() as cur:
            cur.executemany("INSERT INTO b_peer VALUES (%s, %s)", list(enumerate(ids)))
            cur.executemany("INSERT INTO b_res VALUES (%s, %s)", list(enumerate(rids)))
            cur.executemany("INSERT INTO b_ev VALUES (%s, %s, %s, %s, %s, %s, %s)",
                            [(i, *row) for i, row in enumerate(mix)])
        c.execute("ANALYZE b_peer; ANALYZE b_res; ANALYZE b_ev")
        c.execute("DROP INDEX IF EXISTS ix_exchange_log_pkg_id")
        c.commit()
        h = "md5(g.i::text) || md5('h' || g.i::text)"
        prev = ("CASE WHEN g.i = 1 THEN %(genesis)s ELSE md5((g.i - 1)::text) || "
                "md5('h' || (g.i - 1)::text) END")
        pkg = ("substr(m, 1, 8) || '-' || substr(m, 9, 4) || '-4' || substr(m, 14, 3) || '-a'"
               " || substr(m, 18, 3) || '-' || substr(m, 21, 12)")
        sql = f"""
            INSERT INTO exchange_log (id, ts, pkg_id, event, peer, resource, kind, size,
                                      status, reason, prev_hash, hash)
            SELECT g.i, %(t0)s + g.i * %(dt)s + (g.i * 7 %% 100) * %(dt)s / 100.0,
                   (SELECT {pkg} FROM (SELECT md5('p' || (g.i / 2)::text) AS m) x),
                   e.event, CASE WHEN e.relayed THEN p.id || '>' || q.id ELSE p.id END,
                   CASE WHEN e.kind IN ('health', 'log-head', 'log-witness', 'broker-login',
                        'broker-login-ok') THEN '' WHEN e.kind IN ('catalog', 'catalog-pub')
                        THEN 'catalog' ELSE r.id END,
                   e.kind, CASE WHEN e.size = 0 THEN 0
                                ELSE e.size / 2 + (g.i * 2654435761 %% (e.size + 1)) END,
                   e.status, e.reason, {prev}, {h}
            FROM generate_series(%(a)s::bigint, %(b)s::bigint) AS g(i)
            JOIN b_ev e ON e.n = (g.i * 2654435761 %% {len(mix)})
            JOIN b_peer p ON p.n = (g.i * 40503 %% {len(ids)})
            JOIN b_peer q ON q.n = ((g.i * 40503 %% {len(ids)}) + 1 + g.i * 9973 %% {len(ids) - 1})
                                    %% {len(ids)}
            JOIN b_res r ON r.n = (g.i * 7919 %% {len(rids)})
        """
        dt = (t1 - t0) / max(n, 1)
        for a in range(1, n + 1, step):
            b = min(n, a + step - 1)
            t = time.monotonic()
            c.execute(sql, {"t0": t0, "dt": dt, "a": a, "b": b, "genesis": exlog.GENESIS})
            c.commit()
            print(f"    exchange log rows {a:,}-{b:,} in {time.monotonic() - t:.1f} s",
                  flush=True)
        t = time.monotonic()
        c.execute("CREATE INDEX ix_exchange_log_pkg_id ON exchange_log (pkg_id)")
        c.commit()
        print(f"    index on pkg_id in {time.monotonic() - t:.1f} s", flush=True)
        last_id, last_hash = c.execute(
            "SELECT id, hash FROM exchange_log ORDER BY id DESC LIMIT 1").fetchone()
    head = cbor2.dumps({"id": last_id, "hash": last_hash,
                        "sig": ident.sign(exlog.head_body(last_id, last_hash))})
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DELETE FROM meta WHERE key = %s", (exlog.HEAD_KEY,))
        c.execute("INSERT INTO meta (key, value) VALUES (%s, %s)", (exlog.HEAD_KEY, head))


# --- the center -------------------------------------------------------------------------------

def state_url() -> str:
    return DSN.replace("postgresql://", "postgresql+psycopg://")


def write_config(d: Path, broker_port: int, console_port: int) -> Path:
    path = d / "exnode.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["broker"]["port"] = broker_port
    data["state"] = {"url": state_url()}
    data["console"] = {"listen": f"127.0.0.1:{console_port}"}
    data["log"] = {"level": "warning"}
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
                    encoding="utf-8")
    return path


def marker_of(args: argparse.Namespace, ca_fp: str) -> dict[str, Any]:
    return {"v": 1, "members": args.members, "resources": args.resources,
            "log_rows": args.log_rows, "ca": ca_fp}


def cached(args: argparse.Namespace) -> bool:
    """Is the kept data set (database and folder) the one asked for?"""
    keys = CACHE / "keys"
    if args.fresh or not (keys / idn.CA_CERT).exists():
        return False
    ca_fp = idn.fingerprint(idn.Identity("center", keys).ca_cert)  # type: ignore[arg-type]
    try:
        with psycopg.connect(DSN, connect_timeout=5) as c:
            row = c.execute("SELECT value FROM meta WHERE key = %s", (MARKER,)).fetchone()
            widened = c.execute("SELECT 1 FROM meta WHERE key = %s", (WIDENED,)).fetchone()
    except psycopg.Error:
        return False
    if widened is not None:  # an earlier version's data set, with a schema of its own
        return False
    return row is not None and json.loads(bytes(row[0])) == marker_of(args, ca_fp)


def build(args: argparse.Namespace) -> dict[str, float]:
    """A fresh database and center folder, filled; returns seconds per part."""
    took: dict[str, float] = {}
    with psycopg.connect(ADMIN, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DBNAME} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {DBNAME}")
    shutil.rmtree(CACHE, ignore_errors=True)
    r = subprocess.run([*exnode_cmd(), "init", "--role", "center", "--id", "center",
                        "--dir", str(CACHE), "--json"], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"bench: exnode init failed: {r.stderr}")
    (CACHE / "state.db").unlink(missing_ok=True)  # init's SQLite; the bench uses PostgreSQL
    for suffix in ("-wal", "-shm"):
        (CACHE / f"state.db{suffix}").unlink(missing_ok=True)
    cfg = load_config(write_config(CACHE, 1883, 8443))
    ident = idn.Identity("center", cfg.keys_dir)
    t = time.monotonic()
    eng = open_state(cfg.state_url)
    registry.ensure_self(eng, ident)
    took["schema"] = time.monotonic() - t
    ids, providers = member_ids(args.members)
    t = time.monotonic()
    fill_members(eng, ident, ids)
    took["members"] = time.monotonic() - t
    print(f"  {len(ids):,} members with keys and certificates in {took['members']:.1f} s",
          flush=True)
    docs = catalog_docs(args.resources, providers)
    t = time.monotonic()
    fill_catalog(eng, docs)
    took["catalog"] = time.monotonic() - t
    print(f"  {len(docs):,} catalog entries in {took['catalog']:.1f} s", flush=True)
    t = time.monotonic()
    fill_log(DSN, ident, args.log_rows, ids, [d["resource"] for d in docs])
    took["log"] = time.monotonic() - t
    print(f"  {args.log_rows:,} exchange-log rows in {took['log']:.1f} s", flush=True)
    t = time.monotonic()
    with psycopg.connect(DSN, autocommit=True) as c:
        c.execute("VACUUM ANALYZE")
        c.execute("CHECKPOINT")
    took["vacuum"] = time.monotonic() - t
    ca = ident.ca_cert
    assert ca is not None
    with eng.begin() as conn:
        conn.execute(meta.insert().values(key=MARKER, value=json.dumps(
            marker_of(args, idn.fingerprint(ca))).encode()))
    eng.dispose()
    return took


def counts() -> dict[str, int]:
    with psycopg.connect(DSN) as c:
        return {
            "members": c.execute("SELECT count(*) FROM members WHERE status = 'approved' "
                                 "AND role = 'bureau'").fetchone()[0],
            "resources": c.execute("SELECT count(*) FROM catalog_entries WHERE current")
            .fetchone()[0],
            "log_rows": c.execute("SELECT max(id) FROM exchange_log").fetchone()[0],
            "db_bytes": c.execute("SELECT pg_database_size(current_database())")
            .fetchone()[0]}


# --- measuring --------------------------------------------------------------------------------

def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def figures(ms: list[float], sizes: list[int]) -> dict[str, Any]:
    p95 = pct(ms, 95)
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2),
            "p95_ms": round(p95, 2), "p99_ms": round(pct(ms, 99), 2),
            "max_ms": round(max(ms), 2), "ratio_p95_target": round(p95 / TARGET_P95_MS, 3),
            "bytes": round(statistics.median(sizes))}


def timed(fn: Any, n: int) -> dict[str, Any]:
    ms, sizes = [], []
    for _ in range(n):
        t = time.perf_counter()
        size = fn()
        ms.append((time.perf_counter() - t) * 1000)
        sizes.append(size)
    return figures(ms, sizes)


def csrf_of(html: str) -> str:
    m = re.search(r'name="_csrf" value="([^"]+)"', html)
    if not m:
        raise SystemExit("bench: no CSRF token in the login page")
    return m.group(1)


# An earlier version of this bench widened exchange_log.status in its cached database
# (the console's audit anchor did not fit then): such a data set is built again.
WIDENED = "bench_console_status_widened"


def add_accounts(cfg_path: Path) -> None:
    have = {a["name"] for a in json.loads(subprocess.run(
        [*exnode_cmd(), "-c", str(cfg_path), "console", "accounts", "--json"],
        capture_output=True, text=True, timeout=60, check=True).stdout)}
    for name, (role, pw) in ACCOUNTS.items():
        if name in have:
            continue
        r = subprocess.run([*exnode_cmd(), "-c", str(cfg_path), "console", "add", name,
                            "--role", role, "--password-stdin", "--json"], input=pw,
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise SystemExit(f"bench: console add {name}: {r.stdout}{r.stderr}")


def login(port: int) -> httpx.Client:
    web = httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=False,
                       follow_redirects=False, timeout=60.0)
    tok = csrf_of(web.get("/login").text)
    name = "bench-admin"
    r = web.post("/login", data={"_csrf": tok, "name": name, "password": ACCOUNTS[name][1]})
    if r.status_code != 302 or r.headers.get("location") != "/":
        raise SystemExit(f"bench: login refused ({r.status_code}): {r.text[:300]}")
    return web


def page(web: httpx.Client, path: str, must: str) -> int:
    r = web.get(path)
    if r.status_code != 200 or must not in r.text:
        raise SystemExit(f"bench: GET {path} answered {r.status_code}: {r.text[:300]}")
    return len(r.content)


def route(sock: Path, path: str) -> int:
    return len(json.dumps(call(sock, "GET", path, timeout=60), ensure_ascii=False).encode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--resources", type=int, default=5000)
    ap.add_argument("--log-rows", type=int, default=10_000_000)
    ap.add_argument("--requests", type=int, default=300, help="timed GETs per page")
    ap.add_argument("--fresh", action="store_true", help="rebuild the kept data set")
    args = ap.parse_args()
    if shutil.which("mosquitto") is None:
        raise SystemExit("bench: mosquitto is not installed")
    t = time.monotonic()
    reused = cached(args)
    if reused:
        took = {}
        print(f"reusing the data set in {DBNAME} and {CACHE} (--fresh to rebuild)", flush=True)
    else:
        print(f"building the data set in {DBNAME} and {CACHE} ...", flush=True)
        took = build(args)
    fill_s = time.monotonic() - t
    ids, _ = member_ids(args.members)
    eng = open_state(state_url())
    online, heard = refresh_contacts(eng, ids)
    eng.dispose()
    n = counts()
    print(f"data set: {n['members']:,} members ({online} heard from in the last 2 min, "
          f"{n['members'] - heard} never), {n['resources']:,} catalog entries, "
          f"{n['log_rows']:,} exchange-log rows, {n['db_bytes'] / 2**30:.2f} GiB; "
          f"{'reused' if reused else 'filled'} in {fill_s:.1f} s", flush=True)

    root = Path(tempfile.mkdtemp(prefix="exn-bco-", dir="/tmp"))
    broker, bport = start_mosquitto(root)
    cport = free_port()
    cfg_path = write_config(CACHE, bport, cport)
    sock = CACHE / "run" / "exnode.sock"
    log = open(root / "daemon.log", "ab")
    proc = subprocess.Popen([*exnode_cmd(), "-c", str(cfg_path), "run"], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    results: dict[str, Any] = {}
    try:
        t = time.monotonic()

        def up() -> bool:
            if proc.poll() is not None:
                raise SystemExit(f"bench: the center exited with {proc.returncode}: "
                                 + (root / "daemon.log").read_text(errors="replace")[-2000:])
            try:
                return bool(call(sock, "GET", "/status", timeout=30)["broker"]["connected"])
            except Exception:
                return False

        wait_until(up, 300, 0.2, "the center")
        start_s = time.monotonic() - t
        add_accounts(cfg_path)
        web = login(cport)
        print(f"center up in {start_s:.1f} s; console at https://127.0.0.1:{cport}/",
              flush=True)
        k = args.requests
        pages = [("overview", "/", 'id="members"')] + [
            (f"search {q}", f"/catalog?q={quote(q)}", "<table") for q in TERMS]
        for _name, path, must in pages:  # warm up
            for _ in range(5):
                page(web, path, must)
        routes = [("GET /status", "/status"), ("GET /alerts", "/alerts"),
                  ("GET /monitor/items", "/monitor/items")] + [
            (f"GET /catalog/search {q}", f"/catalog/search?q={quote(q)}") for q in TERMS]
        hits = {q: len(call(sock, "GET", f"/catalog/search?q={quote(q)}")) for q in TERMS}
        print(f"\n{'page (console, HTTPS)':34} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}"
              f" {'p95/200':>8} {'bytes':>9}")
        for name, path, must in pages:
            f = results[name] = timed(lambda p=path, m=must: page(web, p, m), k)
            extra = f"  ({hits[name[7:]]} hit(s))" if name.startswith("search ") else ""
            print(f"{name:34} {f['p50_ms']:8.1f} {f['p95_ms']:8.1f} {f['p99_ms']:8.1f} "
                  f"{f['max_ms']:8.1f} {f['ratio_p95_target']:8.2f} {f['bytes']:9,}{extra}",
                  flush=True)
        print(f"\n{'control route (socket)':34} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}"
              f" {'p95/200':>8} {'bytes':>9}")
        for name, path in routes:
            f = results[name] = timed(lambda p=path: route(sock, p), max(50, k // 3))
            print(f"{name:34} {f['p50_ms']:8.1f} {f['p95_ms']:8.1f} {f['p99_ms']:8.1f} "
                  f"{f['max_ms']:8.1f} {f['ratio_p95_target']:8.2f} {f['bytes']:9,}",
                  flush=True)
        web.close()
        worst = max(v["p95_ms"] for name, v in results.items()
                    if name == "overview" or name.startswith("search "))
        print(f"\nworst console p95 {worst:.1f} ms, target {TARGET_P95_MS:.0f} ms: "
              f"ratio {worst / TARGET_P95_MS:.2f} "
              f"({'met' if worst <= TARGET_P95_MS else 'MISSED'})", flush=True)
        print(json.dumps({
            "bench": "console", "cpus": os.cpu_count(), "members": n["members"],
            "members_online": online, "resources": n["resources"], "log_rows": n["log_rows"],
            "db_bytes": n["db_bytes"], "reused": reused, "fill_s": round(fill_s, 1),
            "fill_parts_s": {k2: round(v, 1) for k2, v in took.items()},
            "start_s": round(start_s, 1), "requests": k, "target_p95_ms": TARGET_P95_MS,
            "worst_p95_ms": worst, "ratio": round(worst / TARGET_P95_MS, 3),
            "search_hits": hits,
            "results": results}, ensure_ascii=False))
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
