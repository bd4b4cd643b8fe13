"""GPU chooser for notebook 8-Z: a bundled snapshot of GPU specs and prices, a
price-performance score, and a refresh that scrapes a public spec table.

The refresh reads Wikipedia's "List of Nvidia graphics processing units" (tables with a
two-row header: "Memory / Size", "Memory / Bandwidth", "Processing power / Single
precision", "Release price"). Wikipedia changes layouts now and then, so the parser looks
columns up by keywords and says clearly which ones it could not find; offline, or when
the page cannot be read, the bundled snapshot is used.
"""

from __future__ import annotations

import csv
import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPEC_URL = "https://en.wikipedia.org/wiki/List_of_Nvidia_graphics_processing_units"
SNAPSHOT = Path(__file__).resolve().parent / "data" / "gpu-snapshot.csv"
USER_AGENT = "dl-workshop-gpu-chooser/1.0 (workshop notebook; https://example.org/dl-workshop)"

FIELDS = ("name", "kind", "offer", "memory_gb", "bandwidth_gbs", "fp32_tflops", "fp16_tflops",
          "price_usd", "price_unit", "source", "as_of")
NUMERIC = ("memory_gb", "bandwidth_gbs", "fp32_tflops", "fp16_tflops", "price_usd")

# Column -> words that must all occur in its (flattened, lower-case) header. The first
# four are required: without them a table is not a spec table any more.
COLUMN_KEYWORDS: dict[str, tuple[str, ...]] = {
    "name": ("model",),
    "memory_gb": ("memory", "size"),
    "bandwidth_gbs": ("bandwidth",),
    "fp32_tflops": ("single precision",),
    "fp16_tflops": ("half precision",),
    "price_usd": ("price",),
}
REQUIRED = ("name", "memory_gb", "bandwidth_gbs", "fp32_tflops")


class LayoutChanged(Exception):
    """The page no longer has the table layout the parser expects."""


@dataclass
class Refresh:
    rows: list[dict[str, Any]]
    refreshed: bool
    message: str


# --- the snapshot -----------------------------------------------------------------------

def load_snapshot(path: Path = SNAPSHOT) -> list[dict[str, Any]]:
    """Rows of the bundled CSV (lines starting with # are notes), numbers as floats."""
    with path.open(encoding="utf-8") as handle:
        reader = csv.DictReader(line for line in handle if not line.startswith("#"))
        return [_typed(row) for row in reader]


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    out = {field: row.get(field) or None for field in FIELDS}
    for field in NUMERIC:
        out[field] = float(out[field]) if out[field] not in (None, "") else None
    return out


# --- scoring ----------------------------------------------------------------------------

def score(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add price-performance: FP16 (else FP32) TFLOPS per 1000 USD of purchase price, or
    TFLOPS per USD per hour for cloud offers. Rows without a price get None."""
    scored = []
    for row in rows:
        tflops = row.get("fp16_tflops") or row.get("fp32_tflops")
        price = row.get("price_usd")
        value = None
        if tflops and price:
            value = tflops / price * (1000 if row.get("price_unit") == "purchase" else 1)
        scored.append({**row, "tflops_per_price": value})
    return scored


# --- scraping ---------------------------------------------------------------------------

def fetch_page(url: str = SPEC_URL, timeout: float = 15) -> str:
    import requests

    response = requests.get(url, timeout=timeout, headers={"User-Agent": USER_AGENT})
    response.raise_for_status()
    return response.text


def _cell_text(cell: Any) -> str:
    for note in cell.find_all("sup"):  # footnote markers like [12] or [a]
        note.decompose()
    return " ".join(cell.get_text(" ", strip=True).split())


def table_grid(table: Any) -> tuple[list[list[str]], int]:
    """The table as a full grid (rowspan/colspan expanded) and how many header rows it has."""
    grid: list[list[str | None]] = []
    header_rows = 0
    in_header = True
    pending: dict[tuple[int, int], str] = {}
    for r, tr in enumerate(table.find_all("tr")):
        cells = tr.find_all(["th", "td"], recursive=False)
        if in_header and any(c.name == "td" for c in cells):
            in_header = False
        if in_header:
            header_rows += 1
        row: list[str | None] = []
        col = 0
        for cell in cells:
            while (r, col) in pending:
                row.append(pending.pop((r, col)))
                col += 1
            text = _cell_text(cell)
            rowspan = _span(cell.get("rowspan"))
            colspan = _span(cell.get("colspan"))
            for c in range(colspan):
                row.append(text)
                for extra in range(1, rowspan):
                    pending[(r + extra, col + c)] = text
            col += colspan
        while (r, col) in pending:
            row.append(pending.pop((r, col)))
            col += 1
        grid.append(row)
    return [[c or "" for c in row] for row in grid], header_rows


def _span(value: Any) -> int:
    match = re.match(r"\d+", str(value or "1"))
    return max(1, int(match.group())) if match else 1


def _number(text: str) -> float | None:
    match = re.search(r"\d[\d,]*(?:\.\d+)?", text.replace("\u2009", ""))
    return float(match.group().replace(",", "")) if match else None


def parse_spec_tables(html: str, source: str = SPEC_URL) -> list[dict[str, Any]]:
    """GPU rows from every table whose header has the required columns.

    Raises LayoutChanged naming the missing columns when no table qualifies."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    tables = soup.find_all("table")
    today = datetime.date.today().isoformat()
    rows: list[dict[str, Any]] = []
    best_missing: list[str] | None = None
    for table in tables:
        grid, header_rows = table_grid(table)
        if not header_rows or len(grid) <= header_rows:
            continue
        width = max(len(row) for row in grid)
        headers = [" / ".join(dict.fromkeys(row[i] for row in grid[:header_rows] if i < len(row) and row[i])).lower()
                   for i in range(width)]
        columns = {field: next((i for i, h in enumerate(headers) if all(k in h for k in words)), None)
                   for field, words in COLUMN_KEYWORDS.items()}
        missing = [field for field in REQUIRED if columns[field] is None]
        if missing:
            if best_missing is None or len(missing) < len(best_missing):
                best_missing = missing
            continue
        for data in grid[header_rows:]:
            row = _row(data, columns, headers)
            if row:
                rows.append({**row, "kind": "gpu", "offer": "", "price_unit": "purchase",
                             "source": source, "as_of": today})
    if not rows:
        wanted = ", ".join(f"{field} ({' + '.join(COLUMN_KEYWORDS[field])})" for field in (best_missing or REQUIRED))
        raise LayoutChanged(
            f"the page's layout has changed: found {len(tables)} table(s) but none with the columns {wanted}; "
            f"update COLUMN_KEYWORDS in gpu_chooser.py to the new headers (the bundled snapshot is used meanwhile)"
        )
    return rows


def _row(data: list[str], columns: dict[str, int | None], headers: list[str]) -> dict[str, Any] | None:
    def value(field: str) -> float | None:
        index = columns[field]
        if index is None or index >= len(data):
            return None
        number = _number(data[index])
        if number is None:
            return None
        header = headers[index]
        if field.endswith("_tflops") and "gflops" in header:
            number /= 1000
        if field == "memory_gb" and "mib" in header or field == "memory_gb" and "(mb" in header:
            number /= 1024
        return number

    name_index = columns["name"]
    name = data[name_index].strip() if name_index is not None and name_index < len(data) else ""
    fp32 = value("fp32_tflops")
    if not name or fp32 is None:
        return None  # a sub-header or a note row
    return {"name": name, "memory_gb": value("memory_gb"), "bandwidth_gbs": value("bandwidth_gbs"),
            "fp32_tflops": fp32, "fp16_tflops": value("fp16_tflops"), "price_usd": value("price_usd")}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("geforce", "").replace("nvidia", ""))


def merge(snapshot: list[dict[str, Any]], scraped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Snapshot rows updated with scraped numbers (matched by name); new GPUs appended.
    A scraped row without a price keeps the snapshot's price."""
    merged = [dict(row) for row in snapshot]
    index = {_key(row["name"]): row for row in merged if row["kind"] == "gpu"}
    for row in scraped:
        known = index.get(_key(row["name"]))
        if known is None:
            merged.append(row)
            index[_key(row["name"])] = row
            continue
        for field in NUMERIC:
            if row.get(field) is not None:
                known[field] = row[field]
        known["source"], known["as_of"] = row["source"], row["as_of"]
    return merged


def refresh(url: str = SPEC_URL, snapshot: Path = SNAPSHOT, timeout: float = 15) -> Refresh:
    """Scraped specs merged into the snapshot; the snapshot alone (and why) when that fails."""
    import requests

    base = load_snapshot(snapshot)
    as_of = max((row["as_of"] or "" for row in base), default="?")
    try:
        scraped = parse_spec_tables(fetch_page(url, timeout), source=url)
    except requests.RequestException as error:
        return Refresh(base, False, f"could not read {url} ({type(error).__name__}); "
                                    f"using the bundled snapshot of {as_of}")
    except LayoutChanged as error:
        return Refresh(base, False, f"{url}: {error}")
    return Refresh(merge(base, scraped), True, f"refreshed {len(scraped)} GPU rows from {url}")
