"""The ledger as files (CSV with and without a BOM, xlsx, PDF with a chart per section)
parsed back, and its detached signature: it verifies, and a one-byte change, a changed
claim, another key or a certificate from another CA do not. The CLI's bad input: one
line and exit 2, before any daemon is asked."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from exnode.node.kernel import identity as idn
from exnode.node.kernel.api import Signer, service_signed_message
from exnode.plugins.builtin.ledger import render, signing

from .test_ledger import eng, ledger, section  # noqa: F401  (eng: the fixture)

EXNODE = str(Path(sys.executable).with_name("exnode"))


def _blocks(text: str) -> dict[str, list[dict[str, str]]]:
    """CSV blocks by their title ('exchange total', ...) as lists of dicts."""
    out: dict[str, list[dict[str, str]]] = {}
    rows = list(csv.reader(io.StringIO(text)))
    i = 0
    while i < len(rows):
        r = rows[i]
        if r and r[0].startswith("## "):
            header = rows[i + 1]
            body = []
            j = i + 2
            while j < len(rows) and rows[j] and not rows[j][0].startswith("#"):
                body.append(dict(zip(header, rows[j], strict=True)))
                j += 1
            out[r[0][3:]] = body
            i = j
        else:
            i += 1
    return out


def test_csv_parses_back_to_the_figures(eng):  # noqa: F811
    d = ledger(eng)
    raw = render.render(d, "csv")
    assert not raw.startswith("\ufeff".encode())
    blocks = _blocks(raw.decode())
    for sec in d["sections"]:
        (tot,) = blocks[f"{sec['id']} total"]
        for c in sec["columns"]:
            v = sec["total"][c["name"]]
            assert tot[c["name"]] == ("" if v is None else str(v)), (sec["id"], c["name"])
        got = {r["resource"]: r for r in blocks[f"{sec['id']} resource"]}
        for r in sec["by_resource"]:
            for c in sec["columns"]:
                v = r[c["name"]]
                assert got[r["resource"]][c["name"]] == ("" if v is None else str(v))
    ex = {r["peer"]: r for r in blocks["exchange peer"]}
    assert ex["center"]["bytes_out"] == "1200"
    assert "交换数据包与字节" in raw.decode()
    bom = render.render(d, "csv", bom=True)
    assert bom.startswith("\ufeff".encode()) and bom[3:] == raw


def _xlsx_cells(data: bytes) -> dict[str, list[list[str]]]:
    """Sheet name -> rows of cell texts (shared strings resolved), read from the XML."""
    z = zipfile.ZipFile(io.BytesIO(data))
    ns = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
    import xml.etree.ElementTree as ET

    strings = ["".join(t.text or "" for t in si.iter(f"{ns}t"))
               for si in ET.fromstring(z.read("xl/sharedStrings.xml")).iter(f"{ns}si")]
    wb = ET.fromstring(z.read("xl/workbook.xml"))
    names = [s.get("name") for s in wb.iter(f"{ns}sheet")]
    out = {}
    for i, name in enumerate(names, 1):
        rows = []
        for row in ET.fromstring(z.read(f"xl/worksheets/sheet{i}.xml")).iter(f"{ns}row"):
            cells = []
            for c in row.iter(f"{ns}c"):
                v = c.find(f"{ns}v")
                text = "" if v is None else v.text or ""
                cells.append(strings[int(text)] if c.get("t") == "s" else text)
            rows.append(cells)
        out[name] = rows
    return out


def test_xlsx_parses_back(eng):  # noqa: F811
    d = ledger(eng)
    sheets = _xlsx_cells(render.render(d, "xlsx"))
    assert list(sheets) == ["ledger"] + [s["id"] for s in d["sections"]]
    ex = sheets["exchange"]
    names = [c["name"] for c in section(d, "exchange")["columns"]]
    i = next(k for k, r in enumerate(ex) if r and r[0] == "total" and r[1:] == names)
    assert ex[i - 1][1] == "接收包数"
    total = ex[i + 1]
    assert total[0] == "total"
    assert float(total[1 + names.index("bytes_out")]) == 1260
    assert float(total[1 + names.index("packages_in")]) == 2
    people = next(r for r in ex if r and r[0] == "people")
    assert float(people[1 + names.index("packages_out")]) == 3
    assert sheets["ledger"][0][:4] == ["exnode ledger 台账", "center", "center", "2026-11"]


def test_pdf_has_a_chart_per_section(eng):  # noqa: F811
    import pypdf

    d = ledger(eng)
    raw = render.render(d, "pdf")
    assert raw.startswith(b"%PDF-")
    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(raw)).pages)
    for sec in d["sections"]:
        assert f"Chart: {sec['id']}" in text, sec["id"]
        assert sec["title_zh"] in text, sec["title_zh"]
    assert "交换台账" in text and "2026-11" in text
    assert "1,260" in text  # bytes out, the total row
    # the same data gives the same file (invariant: no time stamps in it)
    assert render.render(d, "pdf") == raw


# --- the signature ---------------------------------------------------------------------------

@pytest.fixture
def member(tmp_path):
    """A CA, and a member 'center' with a certificate it issued."""
    ca_dir = tmp_path / "ca"
    ca_cert = idn.create_ca(ca_dir, "center")
    ca_key = idn._load_private(ca_dir / idn.CA_KEY)
    key = ed25519.Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes_raw()
    enc = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    cert = idn.issue_cert(ca_key, ca_cert, "center", "center", pub, enc)
    return key, Signer("center", "Ed25519", pub, cert), (ca_dir / idn.CA_CERT).read_bytes()


def _sign(key, signer, data=b"%PDF-1.4 ledger bytes"):
    return data, signing.make_sig(
        data, node="center", month="2026-11", fmt="pdf", file="l.pdf",
        signed_at=time.time(), signer=signer,
        sign=lambda purpose, b: key.sign(service_signed_message(purpose, b)))


def test_signature_verifies_and_a_tamper_does_not(member):
    key, signer, ca = member
    data, doc = _sign(key, signer)
    doc = signing.load_sig(signing.sig_text(doc).encode())
    signing.verify(data, doc, signer.public_key)
    signing.verify(data, doc, signing.cert_key(doc, ca))
    for i in (0, len(data) // 2, len(data) - 1):
        bad = bytearray(data)
        bad[i] ^= 1
        with pytest.raises(signing.NotVerified, match="SHA-256"):
            signing.verify(bytes(bad), doc, signer.public_key)
    with pytest.raises(signing.NotVerified):
        signing.verify(data[:-1], doc, signer.public_key)
    # a changed claim (the month), with the file's hash still right
    with pytest.raises(signing.NotVerified, match="not center's"):
        signing.verify(data, {**doc, "month": "2026-10"}, signer.public_key)
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(signing.NotVerified, match="not center's"):
        signing.verify(data, doc, other)
    # the signature is over the service prefix: a raw signature of the claims fails
    raw = {**doc, "signature": __import__("base64").b64encode(
        key.sign(signing.claims_bytes(doc))).decode()}
    with pytest.raises(signing.NotVerified):
        signing.verify(data, raw, signer.public_key)


def test_certificate_from_another_ca_or_of_another_node(member, tmp_path):
    key, signer, _ca = member
    _data, doc = _sign(key, signer)
    other_ca = idn.create_ca(tmp_path / "other", "center")
    from cryptography.hazmat.primitives import serialization

    with pytest.raises(signing.NotVerified, match="CA"):
        signing.cert_key(doc, other_ca.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(signing.NotVerified, match="not b1's"):
        signing.cert_key({**doc, "node": "b1"}, _ca)
    with pytest.raises(signing.NotVerified, match="no certificate"):
        signing.cert_key({**doc, "cert": None}, _ca)


# --- the CLI ---------------------------------------------------------------------------------

def _cli(*args, cwd=None):
    return subprocess.run([EXNODE, "-c", "/nonexistent/exnode.yaml", "ledger", *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("args,what", [
    (("--month", "2026-13"), "--month '2026-13'"),
    (("--month", "11-2026"), "YYYY-MM"),
    (("--format", "docx", "-o", "x.docx"), "--format 'docx'"),
    (("--format", "pdf"), "-o FILE"),
    (("--month", "2026-11", "-o", "/nonexistent-dir/l.pdf"), "no directory"),
    (("--month", "2026-11", "-o", "/etc/hostname/l.csv"), "no directory"),
    (("--month", "2026-11", "-o", "/tmp"), "is a directory"),
])
def test_bad_input_is_one_line_and_exit_2(args, what, tmp_path):
    r = _cli(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert what in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_cli_verify(member, tmp_path):
    key, signer, ca = member
    data, doc = _sign(key, signer)
    f = tmp_path / "l.pdf"
    f.write_bytes(data)
    (tmp_path / "l.pdf.sig").write_text(signing.sig_text(doc))
    (tmp_path / "ca.crt").write_bytes(ca)
    r = _cli("verify", str(f), "--ca", str(tmp_path / "ca.crt"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["node"] == "center" and out["month"] == "2026-11"
    r = _cli("verify", str(f), "--ca", str(tmp_path / "ca.crt"), "--member", "b1")
    assert r.returncode == 1 and "not by b1" in r.stderr, r.stderr
    f.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    r = _cli("verify", str(f), "--ca", str(tmp_path / "ca.crt"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "SHA-256" in r.stderr
    r = _cli("verify", str(tmp_path / "missing.pdf"), "--ca", str(tmp_path / "ca.crt"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    (tmp_path / "l.pdf.sig").write_text("not json")
    r = _cli("verify", str(f), "--ca", str(tmp_path / "ca.crt"))
    assert r.returncode == 1 and "not JSON" in r.stderr, r.stderr


def test_the_command_imports_light():
    code = ("import sys; from exnode.plugins.builtin.ledger import cli; "
            "bad = [m for m in ('sqlalchemy', 'reportlab', 'xlsxwriter', 'aiohttp') "
            "if m in sys.modules]; print(bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr



