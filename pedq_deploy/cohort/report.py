"""The study report: one static HTML page (no server, no network), opened from the derivatives folder.

A summary (runs done / up to date / failed / not processable, with reasons), the deep grey matter
susceptibility against age where the dataset gives ages (an inline SVG chart), and one sortable row
per run: thumbnails (magnitude with the mask outline, QSM, QSM with the segmentation), age, echoes,
run time, coverage, the QC misfit and flags, and the mean chi of each structure.
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from pathlib import Path

from ..io.bids import write_text_atomic

__all__ = ["write_report", "STRUCTURES"]

STRUCTURES = (
    ("Thalamus", (10, 49), "#e69422"),
    ("Caudate", (11, 50), "#2a8fd0"),
    ("Putamen", (12, 51), "#c0179e"),
    ("Pallidum", (13, 52), "#1f3cff"),
)


def _structure_means(regions: list[dict]) -> dict[str, float | None]:
    out = {}
    for name, labels, _ in STRUCTURES:
        vals = [
            r["mean_ppm"]
            for r in regions
            if r["label"] in labels
            and r.get("mean_ppm") is not None
            and not (isinstance(r["mean_ppm"], float) and math.isnan(r["mean_ppm"]))
            and r.get("voxels", 0) > 0
            and r.get("qc", "ok") == "ok"
        ]  # a structure that failed the segmentation checks has no trustworthy value
        out[name] = sum(vals) / len(vals) if vals else None
    return out


def _age_text(years) -> str:
    if years is None:
        return "n/a"
    if years < 2 / 12:
        return f"{years * 365.25 / 7:.1f} wk"
    if years < 2:
        return f"{years * 12:.1f} mo"
    return f"{years:.1f} y"


def _chart(records: list[dict]) -> str:
    pts = [(r["age_years"], _structure_means(r["regions"])) for r in records if r.get("age_years") is not None and r["regions"]]
    if not pts:
        return "<p class='note'>No ages in participants.tsv / sessions.tsv (or no segmentation): no chart of values against age.</p>"
    w, h, pad = 640, 300, 48
    xs = [a for a, _ in pts]
    ys = [v for _, m in pts for v in m.values() if v is not None]
    if not ys:
        return "<p class='note'>No deep grey matter values to plot.</p>"
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys + [0.0]), max(ys + [0.0])
    x1 = x1 if x1 > x0 else x0 + 1 / 12
    y1 = y1 if y1 > y0 else y0 + 0.01
    sx = lambda a: pad + (a - x0) / (x1 - x0) * (w - 2 * pad)  # noqa: E731
    sy = lambda v: h - pad - (v - y0) / (y1 - y0) * (h - 2 * pad)  # noqa: E731
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' role='img' aria-label='deep grey matter chi against age'>",
        f"<rect x='0' y='0' width='{w}' height='{h}' fill='white'/>",
        f"<line x1='{pad}' y1='{h - pad}' x2='{w - pad}' y2='{h - pad}' stroke='#444'/>",
        f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{h - pad}' stroke='#444'/>",
        f"<line x1='{pad}' y1='{sy(0.0):.1f}' x2='{w - pad}' y2='{sy(0.0):.1f}' stroke='#bbb' stroke-dasharray='4 3'/>",
    ]
    for i in range(5):
        a = x0 + i * (x1 - x0) / 4
        v = y0 + i * (y1 - y0) / 4
        parts.append(f"<text x='{sx(a):.1f}' y='{h - pad + 16}' font-size='11' text-anchor='middle'>{html.escape(_age_text(a))}</text>")
        parts.append(f"<text x='{pad - 6}' y='{sy(v) + 4:.1f}' font-size='11' text-anchor='end'>{v:.3f}</text>")
    parts.append(f"<text x='{w / 2}' y='{h - 8}' font-size='12' text-anchor='middle'>age</text>")
    parts.append(f"<text x='14' y='{h / 2}' font-size='12' text-anchor='middle' transform='rotate(-90 14 {h / 2})'>mean chi (ppm)</text>")
    for k, (name, _, colour) in enumerate(STRUCTURES):
        for a, m in pts:
            if m[name] is not None:
                parts.append(
                    f"<circle cx='{sx(a):.1f}' cy='{sy(m[name]):.1f}' r='4' fill='{colour}' fill-opacity='0.8'><title>{name}: "
                    f"{m[name]:.4f} ppm at {html.escape(_age_text(a))}</title></circle>"
                )
        parts.append(
            f"<rect x='{w - pad - 90}' y='{pad + 16 * k - 9}' width='10' height='10' fill='{colour}'/>"
            f"<text x='{w - pad - 74}' y='{pad + 16 * k}' font-size='11'>{name}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; }
.meta, .note { color: #555; font-size: 13px; }
.counts span { display: inline-block; margin-right: 14px; padding: 3px 8px; border-radius: 4px; background: #eef; }
.counts .failed { background: #fdd; } .counts .notrun { background: #ffd; }
table { border-collapse: collapse; font-size: 13px; margin-top: 12px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: middle; }
th { cursor: pointer; background: #f4f4f8; position: sticky; top: 0; user-select: none; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.flagged td { background: #fff4e5; }
tr.failed td { background: #fde8e8; }
img.thumb { height: 110px; image-rendering: pixelated; }
ul.problems { font-size: 13px; }
"""

_SCRIPT = """
document.querySelectorAll('table.runs th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var asc = !th.classList.contains('sorted-asc');
    table.querySelectorAll('th').forEach(function (h) { h.classList.remove('sorted-asc', 'sorted-desc'); });
    th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute('data-sort'), y = b.cells[col].getAttribute('data-sort');
      var nx = parseFloat(x), ny = parseFloat(y);
      var cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return asc ? cmp : -cmp;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _cell(text: str, sort=None, num: bool = False) -> str:
    key = text if sort is None else sort
    return f"<td{' class=num' if num else ''} data-sort='{html.escape(str(key), quote=True)}'>{text}</td>"


def write_report(out_root: str | Path, summary: dict) -> Path:
    """Write ``report.html`` into the derivatives folder; returns its path."""
    out_root = Path(out_root)
    records = summary["runs"]
    c = summary["counts"]
    rows = []
    for r in records:
        qc = r.get("qc") or {}
        flags = [f for f in qc.get("flags", [])]
        status = r["status"]
        cls = "failed" if status in ("failed", "not run") else ("flagged" if flags else "")
        means = _structure_means(r.get("regions") or [])
        tes = ", ".join(f"{t * 1e3:.2f}" for t in r.get("echo_times") or [])
        ratio = qc.get("misfit_noise_ratio")
        thumb = (
            f"<img class='thumb' loading='lazy' src='{html.escape(r['figure'])}' alt='magnitude + mask, QSM, segmentation of {html.escape(r['run'])}'>"
            if r.get("figure") and status in ("done", "skipped")
            else ""
        )
        age = r.get("age_years")
        cells = [
            _cell(html.escape(f"{r['run']}_{r['suffix']}")),
            _cell(html.escape(status + (f": {r['reason']}" if r.get("reason") and status != "skipped" else "")), sort=status),
            _cell(html.escape(_age_text(age)), sort=age if age is not None else -1, num=True),
            _cell(f"{r.get('echoes', 0)} ({tes} ms)" if tes else str(r.get("echoes", 0)), sort=r.get("echoes", 0), num=True),
            _cell(
                html.escape(str(r.get("inversion") or "")),
            ),
            _cell(
                f"{r['seconds']:.1f}" if r.get("seconds") is not None else "",
                sort=r.get("seconds") if r.get("seconds") is not None else -1,
                num=True,
            ),
            _cell(f"{r['coverage']:.0%}" if r.get("coverage") is not None else "", sort=r.get("coverage") or -1, num=True),
            _cell(f"{ratio:.2f}" if ratio is not None else "", sort=ratio if ratio is not None else -1, num=True),
            _cell("<br>".join(html.escape(f) for f in flags) or ("ok" if status in ("done", "skipped") else ""), sort=len(flags)),
            *[
                _cell(f"{means[n]:+.4f}" if means[n] is not None else "", sort=means[n] if means[n] is not None else -9, num=True)
                for n, _, _ in STRUCTURES
            ],
            _cell(thumb, sort=""),
        ]
        rows.append(f"<tr class='{cls}'>" + "".join(cells) + "</tr>")
    heads = [
        "run",
        "status",
        "age",
        "echoes (TE)",
        "inversion",
        "time (s)",
        "coverage",
        "QC misfit (x noise)",
        "QC flags",
        *[f"{n} chi (ppm)" for n, _, _ in STRUCTURES],
        "magnitude + mask | QSM | segmentation",
    ]
    problems = [r for r in records if r["status"] in ("failed", "not run")]
    cluster = summary.get("cluster") or {}
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pedq-deploy study report</title><style>{_STYLE}</style></head>
<body>
<h1>pedq-deploy study report</h1>
<p class="meta">{html.escape(summary.get("bids_dir", ""))} &rarr; {html.escape(summary.get("out_dir", ""))}<br>
pedq-deploy {html.escape(str(summary.get("version")))}, {datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")};
wall time {summary.get("wall_seconds", 0):.0f} s on {html.escape(str(cluster.get("scheduler", "n/a")))} ({cluster.get("workers", 0)} worker(s)).
Susceptibility in ppm, referenced to the mean over each run's V-SHARP-eroded brain mask; deep grey matter values average left and right.</p>
<p class="counts"><span>done {c.get("done", 0)}</span><span>up to date {c.get("skipped", 0)}</span>
<span class="failed">failed {c.get("failed", 0)}</span><span class="notrun">not processable {c.get("not run", 0)}</span></p>
{('<ul class="problems">' + "".join(f"<li><b>{html.escape(r['run'] + '_' + r['suffix'])}</b>: {html.escape(r['status'])}: {html.escape(r['reason'])}</li>" for r in problems) + "</ul>") if problems else ""}
<h2>Deep grey matter against age</h2>
{_chart([r for r in records if r["status"] in ("done", "skipped")])}
<h2>Runs</h2>
<p class="note">Click a column to sort. QC misfit: median of |D*chi - field| over the noise the magnitude predicts (about 1 when chi
explains the field down to the noise); flagged rows are shaded.</p>
<table class="runs"><thead><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in heads)}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
<script>{_SCRIPT}</script>
</body></html>
"""
    path = out_root / "report.html"
    write_text_atomic(path, page)
    return path
