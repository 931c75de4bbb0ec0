"""The ledger as a file: JSON, CSV (optionally with a UTF-8 BOM for Excel), xlsx
(XlsxWriter) or PDF (reportlab: a table and a bar chart per section, Chinese in the
built-in CID font STSong-Light, no font file). Each function takes the ledger's data
(``compute.compute``) and returns the file's bytes; XlsxWriter and reportlab are imported
only here, when a file of that kind is made."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from exnode.node.base.errors import UsageError

FORMATS = ("json", "csv", "xlsx", "pdf")
MEDIA = {"json": "application/json", "csv": "text/csv",
         "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
         "pdf": "application/pdf"}
GROUPS = (("by_resource", "resource", "按资源"), ("by_peer", "peer", "按节点"),
          ("by_kind", "kind", "按类型"))
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def render(data: dict[str, Any], fmt: str, bom: bool = False) -> bytes:
    if fmt == "json":
        return (json.dumps(data, ensure_ascii=False, indent=1) + "\n").encode()
    if fmt == "csv":
        return to_csv(data, bom)
    if fmt == "xlsx":
        return to_xlsx(data)
    if fmt == "pdf":
        return to_pdf(data)
    raise UsageError(f"--format '{fmt}': one of {', '.join(FORMATS)}")


def filename(data: dict[str, Any], fmt: str) -> str:
    return f"ledger-{data['node']}-{data['month']}.{fmt}"


def _safe(v: Any) -> Any:
    if isinstance(v, str) and v.startswith(_FORMULA):
        return "'" + v
    return v


def _key_cols(sec: dict[str, Any], group: str) -> list[str]:
    """The key columns of a group's rows: the group, and the resource for the per-peer
    rows of freshness (which are per resource and peer)."""
    rows = sec.get(f"by_{group}") or []
    return [group, "resource"] if group == "peer" and rows and "resource" in rows[0] \
        else [group]


def _header(data: dict[str, Any]) -> list[list[Any]]:
    lg = data["log"]
    return [["exnode ledger 台账", data["node"], data["role"], data["month"], data["timezone"],
             data["from_local"], data["to_local"]],
            ["log rows 日志条数", lg["rows"], "first id", lg["first_id"], "last id",
             lg["last_id"], "clock went back", lg["clock_went_back"]]]


def _blocks(sec: dict[str, Any]) -> list[tuple[str, str, list[str], list[list[Any]]]]:
    """(group, group's Chinese name, key columns, rows) of a section, then its total."""
    names = [c["name"] for c in sec["columns"]]
    out = []
    for field, group, zh in GROUPS:
        if field not in sec:
            continue
        keys = _key_cols(sec, group)
        rows = [[r.get(k) for k in keys] + [r.get(n) for n in names] for r in sec[field]]
        out.append((group, zh, keys, rows))
    out.append(("total", "合计", ["total"], [["total"] + [sec["total"].get(n) for n in names]]))
    return out


# --- CSV ---------------------------------------------------------------------------------------

def to_csv(data: dict[str, Any], bom: bool = False) -> bytes:
    """Blocks, one per section and grouping: a title row ``## SECTION GROUP``, a header
    row (``key`` columns, then the figures by name) and the rows; notes last."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    for row in _header(data):
        w.writerow(row)
    for sec in data["sections"]:
        names = [c["name"] for c in sec["columns"]]
        for group, zh, keys, rows in _blocks(sec):
            w.writerow([])
            w.writerow([f"## {sec['id']} {group}", f"{sec['title_zh']} {zh}", sec["title"]])
            w.writerow(keys + names)
            for r in rows:
                w.writerow(["" if v is None else _safe(v) for v in r])
        notes = [[f"# {c['name']}", c["title_zh"], c.get("note", "")] for c in sec["columns"]
                 if c.get("note")]
        if not sec.get("available", True):
            notes.append(["# section", sec.get("note", "")])
        for n in notes:
            w.writerow(n)
    w.writerow([])
    for rule in data["rules"]:
        w.writerow(["# rule", rule])
    text = buf.getvalue()
    return ("\ufeff" + text).encode() if bom else text.encode()


# --- xlsx --------------------------------------------------------------------------------------

def to_xlsx(data: dict[str, Any]) -> bytes:
    """A summary sheet (the ledger's header and every section's total) and one sheet per
    section: per grouping a header row of Chinese titles, one of names, and the rows."""
    import xlsxwriter

    out = io.BytesIO()
    wb = xlsxwriter.Workbook(out, {"in_memory": True, "strings_to_formulas": False,
                                   "strings_to_urls": False})
    bold = wb.add_format({"bold": True})
    ws = wb.add_worksheet("ledger")
    r = 0
    for row in _header(data):
        ws.write_row(r, 0, row)
        r += 1
    r += 1
    for sec in data["sections"]:
        ws.write(r, 0, f"{sec['title_zh']} {sec['title']}", bold)
        r += 1
        names = [c["name"] for c in sec["columns"]]
        ws.write_row(r, 0, [c["title_zh"] for c in sec["columns"]], bold)
        ws.write_row(r + 1, 0, names)
        ws.write_row(r + 2, 0, [sec["total"].get(n) for n in names])
        r += 4
    for i, rule in enumerate(data["rules"]):
        ws.write(r + i, 0, rule)
    for sec in data["sections"]:
        sh = wb.add_worksheet(sec["id"][:31])
        sh.write(0, 0, f"{sec['title_zh']} {sec['title']}", bold)
        r = 2
        for group, zh, keys, rows in _blocks(sec):
            sh.write(r, 0, f"{zh} {group}", bold)
            sh.write_row(r + 1, 0, keys + [c["title_zh"] for c in sec["columns"]], bold)
            sh.write_row(r + 2, 0, keys + [c["name"] for c in sec["columns"]])
            r += 3
            for row in rows:
                sh.write_row(r, 0, [_safe(v) for v in row])
                r += 1
            r += 1
        for c in sec["columns"]:
            if c.get("note"):
                sh.write_row(r, 0, [c["name"], c["note"]])
                r += 1
        sh.freeze_panes(1, 0)
    wb.close()
    return out.getvalue()


# --- PDF ---------------------------------------------------------------------------------------

FONT = "STSong-Light"


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _chart(sec: dict[str, Any]) -> Any:
    """A bar chart of the section's chart columns per resource (the total when no
    resource has a row); its caption names the section, in plain ASCII."""
    from reportlab.graphics.charts.barcharts import VerticalBarChart
    from reportlab.graphics.charts.legends import Legend
    from reportlab.graphics.shapes import Drawing, String
    from reportlab.lib import colors

    cols = sec["chart"]
    rows = sec.get("by_resource") or []
    cats = [str(r.get("resource")) for r in rows][:24] or ["total"]
    src = rows[:24] or [sec["total"]]
    series = [[float(r.get(c) or 0) for r in src] for c in cols]
    d = Drawing(720, 190)
    ch = VerticalBarChart()
    ch.x, ch.y, ch.width, ch.height = 50, 35, 520, 130
    ch.data = series
    ch.categoryAxis.categoryNames = cats
    ch.categoryAxis.labels.fontName = FONT
    ch.categoryAxis.labels.fontSize = 6
    ch.categoryAxis.labels.angle = 20 if len(cats) > 6 else 0
    ch.valueAxis.valueMin = 0
    ch.valueAxis.labels.fontSize = 6
    top = max((v for s in series for v in s), default=0)
    if top <= 0:
        ch.valueAxis.valueMax = 1
    palette = [colors.HexColor(c) for c in ("#4472c4", "#ed7d31", "#a5a5a5", "#70ad47")]
    for i in range(len(cols)):
        ch.bars[i].fillColor = palette[i % len(palette)]
    d.add(ch)
    lg = Legend()
    lg.x, lg.y = 590, 150
    lg.fontName, lg.fontSize = FONT, 7
    titles = {c["name"]: f"{c['title_zh']} {c['title']}" for c in sec["columns"]}
    lg.colorNamePairs = [(palette[i % len(palette)], titles.get(c, c))
                         for i, c in enumerate(cols)]
    d.add(lg)
    d.add(String(50, 176, f"Chart: {sec['id']} ({', '.join(cols)})", fontName="Helvetica",
                 fontSize=7))
    return d


def to_pdf(data: dict[str, Any]) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.platypus import (
        KeepTogether,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    if FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont(FONT))
    h1 = ParagraphStyle("h1", fontName=FONT, fontSize=15, leading=20)
    h2 = ParagraphStyle("h2", fontName=FONT, fontSize=11, leading=15, spaceBefore=6)
    body = ParagraphStyle("b", fontName=FONT, fontSize=7.5, leading=10)
    small = ParagraphStyle("s", fontName=FONT, fontSize=6.5, leading=8.5,
                           textColor=colors.HexColor("#555555"))
    lg = data["log"]
    story: list[Any] = [
        Paragraph(f"交换台账 Exchange ledger {data['month']} — {data['node']} ({data['role']})",
                  h1),
        Paragraph(f"{data['from_local']} – {data['to_local']} ({data['timezone']}); "
                  f"exchange log rows 日志条数 {lg['rows']:,} (id {lg['first_id']} – "
                  f"{lg['last_id']})" + (f"; the clock went back {lg['clock_went_back']} "
                                          "time(s)" if lg["clock_went_back"] else ""), body),
        Spacer(1, 3 * mm)]
    style = TableStyle([("FONT", (0, 0), (-1, -1), FONT, 6.5),
                        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#dde4f0")),
                        ("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#999999")),
                        ("ALIGN", (1, 1), (-1, -1), "RIGHT"),
                        ("VALIGN", (0, 0), (-1, -1), "MIDDLE")])
    for sec in data["sections"]:
        part: list[Any] = [Paragraph(f"{sec['title_zh']} {sec['title']}", h2)]
        if not sec.get("available", True):
            part.append(Paragraph(sec.get("note", ""), small))
        for group, zh, keys, rows in _blocks(sec):
            if group != "total" and not rows:
                continue
            head = keys + [f"{c['title_zh']}\n{c['title']}" for c in sec["columns"]]
            cells = [head] + [[_fmt(v) for v in r] for r in rows[:200]]
            part.append(Paragraph(f"{zh} {group}", small))
            part.append(Table(cells, repeatRows=1, style=style, hAlign="LEFT"))
            if len(rows) > 200:
                part.append(Paragraph(f"… {len(rows) - 200} more rows in the CSV/xlsx", small))
        part.append(_chart(sec))
        notes = [f"{c['name']}: {c['note']}" for c in sec["columns"] if c.get("note")]
        if notes:
            part.append(Paragraph("; ".join(notes), small))
        story.append(KeepTogether(part[:3]))
        story.extend(part[3:])
    story.append(Paragraph("Counting rules 统计口径", h2))
    story.extend(Paragraph(r, small) for r in data["rules"])
    out = io.BytesIO()
    doc = SimpleDocTemplate(out, pagesize=landscape(A4), leftMargin=12 * mm,
                            rightMargin=12 * mm, topMargin=12 * mm, bottomMargin=12 * mm,
                            title=f"exnode ledger {data['month']} {data['node']}",
                            author=data["node"], subject="exchange ledger",
                            creator="exnode", invariant=1)
    doc.build(story)
    return out.getvalue()
