"""HTML for Jupyter: one object as a field table, a query as its first rows, its counts by state and "N more".

A query's HTML costs a count and one page of rows per site (counts by state come from the DB's GROUP BY),
never the whole result: a million-job query renders as fast as a ten-job one.
"""

from __future__ import annotations

import datetime as _dt
import html
from typing import TYPE_CHECKING, Any, Dict, List, Sequence

from balsam._api import sites as _sites

if TYPE_CHECKING:
    from balsam._api.base import Model, Query

ROWS = 10
"""How many rows a query shows."""

STATE_COLUMN = {"job": "state", "batch_job": "state", "event": "to_state", "transfer_item": "state"}

_STYLE = "border-collapse:collapse;font-size:90%"
_CELL = "padding:2px 8px;text-align:left;border-bottom:1px solid #ddd"


def cell(value: Any, limit: int = 80) -> str:
    """One value as escaped, shortened HTML text."""
    if isinstance(value, _dt.datetime):
        text = value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    elif isinstance(value, str) and type(value) is not str:  # an enum
        text = str(value)
    elif isinstance(value, bytes):
        text = f"<{len(value)} bytes>"
    else:
        text = str(value) if value is not None else ""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return html.escape(text)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table of already-chosen values."""
    head = "".join(f'<th style="{_CELL}">{html.escape(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f'<td style="{_CELL}">{cell(v)}</td>' for v in row) + "</tr>" for row in rows)
    return f'<table style="{_STYLE}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def model_html(obj: "Model") -> str:
    """One object: its class and id, then a two-column table of its fields."""
    fields = obj.display_dict()
    rows = [(k, v) for k, v in fields.items() if k not in ("serialized_class", "source_code")]
    title = f"<b>{html.escape(type(obj).__name__)}</b> {html.escape(str(obj.id if obj.id is not None else '(not saved)'))}"
    return f"<div>{title}{table(['field', 'value'], rows)}</div>"


def _state_counts(query: "Query[Any]") -> Dict[str, int]:
    column = STATE_COLUMN.get(query._model._spec.table)
    if column is None or query._sliced:
        return {}
    out: Dict[str, int] = {}
    filters = dict(query._filters)
    table = query._model._spec.table
    for counts in _sites.readable(_sites.scope(filters), lambda site: site.backend.count_by(table, filters, column)):
        for state, n in counts.items():
            out[str(state)] = out.get(str(state), 0) + n
    return out


def query_html(query: "Query[Any]", rows: int = ROWS) -> str:
    """A query: its first ``rows`` objects, the total, counts by state, and how many more are not shown."""
    model = query._model
    first: List[Any] = list(query[:rows])
    if query._cache is not None:
        total = len(query._cache)
    elif query._sliced and query._hi is None:
        total = max(type(query)(query._manager, filters=query._filters, order=query._order).count() - (query._lo or 0), 0)
    else:
        total = query.count()
    counts = _state_counts(query)
    cols = list(first[0]._repr_fields()) if first else []
    parts = [f"<div><b>{html.escape(model.__name__)} query</b>: {total:,} matching"]
    if counts:
        shown = ", ".join(f"{html.escape(s)}: {n:,}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        parts.append(f" &mdash; {shown}")
    parts.append("</div>")
    if first:
        parts.append(table(cols, [[getattr(o, c) for c in cols] for o in first]))
    if total > len(first):
        parts.append(f"<div><i>{total - len(first):,} more</i></div>")
    return "".join(parts)
