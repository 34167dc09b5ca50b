"""The HTML shell the preview and the run report share: one file, its styles inline, nothing fetched.

Model answers and input values are untrusted text: everything put on a page goes
through ``text`` (escaped) or is SVG built by ``jobs.svg`` (which escapes its labels).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from html import escape
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Sequence

__all__ = ["cell", "document", "money", "show_value", "table", "text", "write_page"]

STYLE = """
*{box-sizing:border-box}
body{margin:0;padding:24px 32px;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;
 color:#222;background:#f6f6f4}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}h3{font-size:14px;margin:14px 0 6px}
.sub{color:#666;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:20px}.card span{color:#666;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:14px}
.charts svg{background:#fff;border:1px solid #ddd;border-radius:6px}
table{border-collapse:collapse;background:#fff;border:1px solid #ddd;margin:6px 0 12px}
th,td{border-bottom:1px solid #eee;padding:5px 9px;text-align:left;vertical-align:top}
th{background:#fafafa;font-weight:600;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.answer{white-space:pre-wrap;word-break:break-word;max-width:46em}
.meta{color:#666;font-size:12px;white-space:nowrap}
.error{color:#a61b1b;background:#fdecec;border-radius:4px;padding:2px 6px;white-space:pre-wrap;word-break:break-word}
.kind{font-weight:600}
.null{color:#999;font-style:italic}
code{background:#eee;border-radius:3px;padding:0 3px}
.row{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:10px 0}
.row table{margin:6px 0 0;width:100%}
.note{color:#666;font-size:12px;max-width:60em}
td{max-width:30em}
table.fields th,table.fields td{padding:2px 9px;font-size:13px;border:0}
table.fields th{background:none;color:#666;width:9em}
"""


def text(value: Any) -> str:
    return escape(str(value), quote=True)


def show_value(value: Any, limit: int = 2000) -> str:
    """Any answer or input value as escaped text: structs and maps as JSON, long vectors shortened."""
    if value is None:
        return '<span class="null">NULL</span>'
    if hasattr(value, "asDict"):
        value = value.asDict(recursive=True)
    if isinstance(value, (list, tuple)) and len(value) > 6 and all(isinstance(v, (int, float)) for v in value):
        head = ", ".join(f"{v:.3f}" for v in value[:4])
        return text(f"[{head}, …] ({len(value)} values)")
    if not isinstance(value, str):
        value = json.dumps(value, default=str, ensure_ascii=False)
    return text(value if len(value) <= limit else value[:limit] + f"… ({len(value):,} characters)")


def money(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "no price"
    return f"${value:,.4f}" if value < 100 else f"${value:,.0f}"


def cell(html: str, numeric: bool = False) -> str:
    return f'<td class="num">{html}</td>' if numeric else f"<td>{html}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """Rows are already HTML (cells built with ``text``/``show_value``); the column indexes in ``numeric``
    are right-aligned."""
    head = "".join(f'<th class="num">{text(h)}</th>' if i in numeric else f"<th>{text(h)}</th>"
                   for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell(c, i in numeric) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def document(title: str, subtitle: str, body: str) -> str:
    made = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{text(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{text(title)}</h1>"
            f"<p class=\"sub\">{subtitle} · written {text(made)}</p>{body}</body></html>")


def write_page(path: str | Path, html: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path.resolve()
