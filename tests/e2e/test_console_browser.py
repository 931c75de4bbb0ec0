"""The web console in real headless Chromium (Debian's package, driven by Playwright):
a star whose b1 owns `people` (conditional, copied into the center's shared library) and
b2 consumes it. Each role sees only its pages; the auditor finds no button to change
anything; the catalog is searched in Chinese; a security administrator approves b2's
request at the center, b1's approves it as provider, and b2's operator downloads the
data, which holds only the granted fields; a package's trace opens from the log; the
monthly ledger downloads and its totals match `exnode log`. Screenshots of every page
are kept in test-artefacts/console/."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from exnode.node.tools.cluster import wait_until
from exnode.policies import accounts as acc

from ..console_helpers import PASSWORDS, ROLES, add_accounts, free_port
from .test_sharing import Sharing, _catalog_everywhere, _insert, _rows

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTEFACTS = Path(os.environ.get("EXNODE_ARTEFACTS",
                                Path(__file__).resolve().parents[2] / "test-artefacts")) \
    / "console"
NAV = {"/": "view:overview", "/catalog": "view:catalog", "/requests": "view:access",
       "/grants": "view:grants", "/query": "query:run", "/log": "view:log",
       "/work": "view:quarantine", "/stats": "view:stats", "/ledger": "view:ledger",
       "/alerts": "view:overview", "/audit": "view:audit", "/accounts": "accounts:manage"}

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (.ci/run installs "
                                       "it: apt-get install chromium fonts-wqy-microhei)")


def launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"])


class Site:
    def __init__(self, browser, port: int, node: str) -> None:
        self.ctx = browser.new_context(ignore_https_errors=True, accept_downloads=True,
                                       viewport={"width": 1366, "height": 900})
        self.page = self.ctx.new_page()
        self.base = f"https://127.0.0.1:{port}"
        self.node = node

    def go(self, path: str):
        r = self.page.goto(self.base + path)
        return r.status if r else None

    def login(self, name: str) -> None:
        self.go("/login")
        self.page.fill("#name", name)
        self.page.fill("#password", PASSWORDS[name])
        self.page.click("#login")
        self.page.wait_for_url(self.base + "/")

    def logout(self) -> None:
        self.page.click("#logout")
        self.page.wait_for_url(self.base + "/login")

    def shot(self, name: str) -> None:
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTEFACTS / f"{self.node}-{name}.png"), full_page=True)

    def close(self) -> None:
        self.ctx.close()


def test_console_in_chromium(make_star, system_broker):
    s = Sharing(make_star, system_broker)
    ports = {n: free_port() for n in ("center", "b1", "b2")}
    for n, port in ports.items():
        s.star.node_settings.setdefault(n, {})["console"] = {"listen": f"127.0.0.1:{port}"}
    try:
        _run(s, ports)
    finally:
        for e in s.engines.values():
            e.dispose()


def _run(s, ports):
    s.up()  # before Playwright's event loop: the star's set-up runs one of its own
    _catalog_everywhere(s)
    people = [{"citizen_id": f"11010119900101{i:04d}", "name": f"张{i}",
               "phone": f"1380000{i:04d}", "district": "东城区" if i % 2 else "西城区"}
              for i in range(20)]
    _insert(s, people)
    wait_until(lambda: len(_rows(s.engines["center"])) == 20, 60, what="the shared library")
    add_accounts(s.star, "center")
    add_accounts(s.star, "b1", ("sec", "op"))
    add_accounts(s.star, "b2", ("op",))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        try:
            _pages(s, ports, browser, people)
        finally:
            browser.close()


def _pages(s, ports, browser, people):
    center = Site(browser, ports["center"], "center")
    # each role sees the pages it may, and gets a refusal for the others
    for name, role in ROLES.items():
        center.login(name)
        links = set(center.page.eval_on_selector_all("header nav a",
                                                     "els => els.map(e => e.getAttribute('href'))"))
        assert links == {p for p, perm in NAV.items() if acc.may(role, perm)}, (name, links)
        for path, perm in NAV.items():
            status = center.go(path)
            assert status == (200 if acc.may(role, perm) else 403), (name, path, status)
            if acc.may(role, perm):
                center.shot(f"{name}{path.replace('/', '-') or '-'}")
        center.logout()

    # the auditor: no form to change anything anywhere it may look
    center.login("aud")
    for path, perm in NAV.items():
        if acc.may("auditor", perm):
            center.go(path)
            forms = center.page.eval_on_selector_all(
                "main form[method=post]", "els => els.map(e => e.getAttribute('action'))")
            assert forms == [], (path, forms)
    assert center.go("/accounts") == 403
    assert "您无权查看此页面" in center.page.inner_text("#error")
    center.logout()

    # search the catalog in Chinese
    center.login("op")
    center.go("/catalog")
    center.page.fill("#q", "人口")
    center.page.click("#search")
    found = center.page.eval_on_selector_all("#entries td:first-child a",
                                             "els => els.map(e => e.textContent)")
    assert found == ["people"], found
    center.page.fill("#q", "营业执照")
    center.page.click("#search")
    assert center.page.eval_on_selector_all("#entries td:first-child a",
                                            "els => els.map(e => e.textContent)") == ["licences"]
    center.shot("catalog-search")
    center.go("/catalog/people")
    assert "公民身份号码" in center.page.inner_text("#elements")
    center.shot("resource")
    center.logout()

    # b2 asks for query access; the center's security administrator approves in one click
    req = s.json("b2", "access", "request", "people", "--service", "query", "--fields",
                 "citizen_id,name,phone", "--purpose", "社保资格核查", "--basis", "《社会保险法》")
    center.login("sec")
    center.go("/requests")
    center.shot("requests")
    center.page.click(f"tr[data-id='{req['id']}'] button.approve")
    center.page.wait_for_url("**/requests?note=Done")
    center.logout()
    trail = s.json("center", "console", "audit", "--limit", "500")
    assert [(a["actor"], a["outcome"]) for a in trail if a["action"] == "access.review"
            and a["target"] == req["id"]] == [("sec", "ok")]
    wait_until(lambda: s.json("b1", "access", "show", req["id"])["status"] == "provider", 30,
               what="the request at the provider")
    b1 = Site(browser, ports["b1"], "b1")
    b1.login("sec")
    b1.go("/requests")
    b1.shot("requests")
    b1.page.click(f"tr[data-id='{req['id']}'] button.approve")
    b1.page.wait_for_url("**/requests?note=Done")
    wait_until(lambda: s.json("b2", "access", "grants") != [], 30, what="the grant at b2")

    # the consumer's download starts from its own (reduced) console
    b2 = Site(browser, ports["b2"], "b2")
    b2.login("op")
    b2.go("/query")
    b2.page.select_option("#resource", "people")
    b2.page.fill("#limit", "0")
    with b2.page.expect_download(timeout=60_000) as dl:
        b2.page.click("#download")
    text = Path(dl.value.path()).read_bytes().decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 20 and list(rows[0]) == ["citizen_id", "name", "phone"]
    assert {r["citizen_id"] for r in rows} == {p["citizen_id"] for p in people}
    # no page shows a value outside the grant (district is not granted)
    b2.go("/catalog/people")
    b2.shot("resource-sample")
    html = b2.page.content()
    assert "张1" in b2.page.inner_text("#sample")
    assert "东城区" not in html and "西城区" not in html
    b2.page.fill("#fields", "name,district") if b2.go("/query") == 200 else None
    b2.page.select_option("#resource", "people")
    b2.page.click("#run")
    assert "outside the grant" in b2.page.content()
    assert "东城区" not in b2.page.content()
    b2.shot("query-refused")

    # verification upload: found / match per field, never a value
    vreq = s.json("b2", "access", "request", "people", "--service", "verify", "--fields",
                  "citizen_id,name", "--purpose", "身份核验")
    assert s.cli("center", "access", "review", vreq["id"], "--approve").returncode == 0
    wait_until(lambda: s.json("b1", "access", "show", vreq["id"])["status"] == "provider", 30,
               what="the verify request at the provider")
    assert s.cli("b1", "access", "answer", vreq["id"], "--approve").returncode == 0
    wait_until(lambda: any(g["service"] == "verify" for g in s.json("b2", "access", "grants")),
               30, what="the verify grant at b2")
    upload = s.root / "check.csv"
    upload.write_text("citizen_id,name\n" + people[0]["citizen_id"] + ",张0\n"
                      + people[1]["citizen_id"] + ",李四\n", encoding="utf-8")
    b2.go("/query")
    b2.page.select_option("#verifyform select[name=resource]", "people")
    b2.page.fill("#vkey", "citizen_id")
    b2.page.fill("#vcheck", "name")
    b2.page.set_input_files("#vfile", str(upload))
    b2.page.click("#verify")
    b2.page.wait_for_selector("#verified")
    cells = b2.page.eval_on_selector_all(
        "#verified tr", "rows => rows.slice(1).map(r => [...r.cells].map(c => c.textContent))")
    assert cells == [["1", "True", "True"], ["2", "True", "False"]], cells
    assert "张1" not in b2.page.content()  # the true value of the record that did not match
    b2.shot("verify")

    # a correction filed by b2 is accepted by b1's operator from the quarantine page
    r = s.cli("b2", "corrections", "file", "people", people[0]["citizen_id"], "--field",
              "name", "--says", "张零", "--evidence", "户口簿第2页", "--json")
    assert r.returncode == 0, r.stderr
    cid = json.loads(r.stdout)["id"]
    wait_until(lambda: s.cli("b1", "corrections", "show", cid).returncode == 0, 30,
               what="the correction at the owner")
    b1.logout()
    b1.login("op")
    b1.go("/work")
    b1.shot("work")
    b1.page.click(f"form[action='/corrections/{cid}/accept'] button")
    b1.page.wait_for_url("**/work?note=Done")
    wait_until(lambda: s.json("b2", "corrections", "show", cid)["status"] == "accepted", 30,
               what="the answer at the consumer")

    # the center's security administrator revokes b2's query grant from the grants page:
    # b2's console stops showing a sample at once (the kept one is not served)
    b2.go("/catalog/people")
    assert b2.page.query_selector("#sample") is not None
    center.login("sec")
    center.go("/grants")
    center.shot("grants")
    center.page.click("tr[data-service='query'][data-grantee='b2'] button.revoke")
    center.page.wait_for_url("**/grants?note=Done")
    center.logout()
    wait_until(lambda: not any(g["service"] == "query" for g in s.json("b2", "access",
                                                                        "grants")),
               30, what="the revocation at b2")
    b2.go("/catalog/people")
    assert b2.page.query_selector("#sample") is None
    assert "张1" not in b2.page.content()

    # a package's trace across hops, from the center's log
    center.login("aud")
    center.go("/log?kind=query-req")
    center.shot("log")
    link = center.page.query_selector("a.pkg")
    assert link is not None
    link.click()
    center.page.wait_for_selector("#trace-center li")
    events = center.page.eval_on_selector_all("#trace-center li b",
                                              "els => els.map(e => e.textContent)")
    assert "applied" in events, events  # b2's request, applied at the center
    assert "b2" in center.page.inner_text("#trace-center")
    center.shot("trace")
    # the same kind of package from b2's console: its own hop and the center's
    b2.go("/log?kind=query-req")
    pkg = b2.page.query_selector("a.pkg").get_attribute("href").rsplit("/", 1)[1]
    shown = s.cli("b2", "log", "show", pkg, "--hops")  # the same from the CLI
    assert shown.returncode == 0 and " at center" in shown.stdout, shown.stdout + shown.stderr
    assert "applied" in shown.stdout.split(" at center", 1)[1]
    b2.page.query_selector("a.pkg").click()
    b2.page.wait_for_selector("#trace-center li")
    mine = b2.page.eval_on_selector_all("#trace-b2 li b", "els => els.map(e => e.textContent)")
    theirs = b2.page.eval_on_selector_all("#trace-center li b",
                                          "els => els.map(e => e.textContent)")
    assert "created" in mine and "applied" in theirs, (mine, theirs)
    b2.shot("trace-hops")

    # the monthly ledger downloads, and its package totals match `exnode log`
    month = time.strftime("%Y-%m", time.localtime())
    center.go(f"/ledger?month={month}")
    center.shot("ledger")
    with center.page.expect_download() as dl:
        center.page.click("#dl-csv")
    ledger_csv = Path(dl.value.path()).read_bytes().decode("utf-8-sig")
    _check_ledger(s, month, ledger_csv)
    with center.page.expect_download() as dl:  # the PDF with the node's signature
        center.page.click("#dl-signed")
    import zipfile

    out = s.root / "signed"
    zipfile.ZipFile(dl.value.path()).extractall(out)
    pdf = next(out.glob("*.pdf"))
    assert pdf.read_bytes().startswith(b"%PDF")
    r = s.cli("center", "ledger", "verify", str(pdf))
    assert r.returncode == 0, r.stdout + r.stderr
    raw = bytearray(pdf.read_bytes())
    raw[len(raw) // 2] ^= 1
    pdf.write_bytes(bytes(raw))
    assert s.cli("center", "ledger", "verify", str(pdf)).returncode == 1
    center.go("/stats")
    center.shot("stats")
    center.go("/audit")
    center.shot("audit")
    for site in (center, b1, b2):
        site.close()


def _check_ledger(s, month, ledger_csv):
    """The downloaded ledger's exchange totals equal what `exnode log` lists for the month
    (rows of the month up to the ledger's last log id: created = out, applied = in)."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    rows = list(csv.reader(io.StringIO(ledger_csv)))
    assert rows[0][0] == "exnode ledger 台账" and rows[0][3] == month
    last_id = int(rows[1][rows[1].index("last id") + 1])
    tz = ZoneInfo(rows[0][4])
    start = datetime.fromisoformat(f"{month}-01").replace(tzinfo=tz).timestamp()
    y, m = map(int, month.split("-"))
    end = datetime(y + m // 12, m % 12 + 1, 1, tzinfo=tz).timestamp()
    at = next(i for i, r in enumerate(rows) if r and r[0] == "## exchange total")
    total = dict(zip(rows[at + 1], rows[at + 2], strict=True))
    logged = json.loads(s.cli("center", "log", "--limit", "10000000", "--json").stdout)
    mine = [r for r in logged if start <= r["ts"] < end and r["id"] <= last_id]
    want = {"packages_out": sum(r["event"] == "created" for r in mine),
            "bytes_out": sum(r["size"] for r in mine if r["event"] == "created"),
            "packages_in": sum(r["event"] == "applied" for r in mine),
            "bytes_in": sum(r["size"] for r in mine if r["event"] == "applied"),
            "relayed": sum(r["event"] == "relayed" for r in mine)}
    assert want["packages_in"] > 0 and want["packages_out"] > 0
    assert {k: int(total[k]) for k in want} == want, (total, want)
