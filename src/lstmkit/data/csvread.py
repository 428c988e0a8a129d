"""Reading a CSV file's series (and its covariate columns) for the csv task.

Cells are parsed as they stream by (a long file is never held as lists of cells); blank or
NA cells and timestamps missing between two dates are errors naming the line unless
``fill`` says how to fill them. With ``future`` columns (known-in-advance covariates), the
rows after the last value whose series cell is blank are the horizon's rows: their future
columns must be filled, and they are returned apart from the series.
"""

from __future__ import annotations

import csv as _csv
import io
import itertools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from lstmkit import timeseries as ts
from lstmkit.errors import ConfigError, DataError
from lstmkit.limits import FLOAT32_MAX

BUILTIN = "airline_passengers.csv"


def _source(path: str) -> tuple[bytes, str]:
    """The file's bytes and the name to use in messages (the packaged series for "")."""
    if not path:
        return resources.files("lstmkit.data").joinpath(BUILTIN).read_bytes(), BUILTIN
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"CSV file {p} does not exist" + (" (it is a directory)" if p.is_dir() else "")
        )
    return p.read_bytes(), str(p)


@dataclass
class Series:
    """A parsed column: values (finite floats, gaps filled), their dates as written ([]
    without a date column; filled timestamps written like the others), the frequency
    (None without dates) and what was filled, in words. ``covariates``: the other columns
    read, aligned with ``values``; ``future``: the future columns' values in the rows after
    the last value (``future_dates`` their dates)."""

    values: list[float]
    dates: list[str]
    column: str
    freq: ts.Frequency | None = None
    notes: str = ""
    covariates: dict[str, list[float]] = field(default_factory=dict)
    future: dict[str, list[float]] = field(default_factory=dict)
    future_dates: list[str] = field(default_factory=list)


def parse(raw: bytes, name: str, column: str = "", date_column: str = "", fill: str = "none"):
    """(values, dates, column) of CSV text ``raw``; see :func:`load`."""
    s = load(raw, name, column, date_column, fill)
    return s.values, s.dates, s.column


def load(
    raw: bytes,
    name: str,
    column: str = "",
    date_column: str = "",
    fill: str = "none",
    extra: tuple[str, ...] = (),
    future: tuple[str, ...] = (),
    only: tuple[str, str] | None = None,
) -> Series:
    """The series in column ``column`` of CSV text ``raw``, with covariate columns ``extra``
    (``future``: those known in advance, see the module docstring); ``only`` (id column,
    id): the rows of one series of a long-format file. A blank or NA cell, or a timestamp
    missing between two dates, is a DataError naming the line unless ``fill`` is ffill,
    interpolate (missing timestamps are inserted) or drop. Every way a file can be
    unusable raises DataError naming the expected and the actual."""
    header, body, column = _open(
        raw, name, column, date_column, extra + only[:1] if only else extra
    )
    if only:
        body = _only(body, header.index(only[0]), only[1])
    names = [column, *extra]
    idx = [header.index(c) for c in names]
    dcol = header.index(date_column) if date_column else -1
    cols: list[list[float | None]] = [[] for _ in names]
    lines, raw_dates, gaps = [], [], []
    for line, row in body:
        for j, (c, i) in enumerate(zip(names, idx, strict=True)):
            cell = row[i].strip() if i < len(row) else ""
            v = _cell(cell, f"CSV file {name}, line {line}, column {c!r}")
            if v is None:
                gaps.append((len(lines), c, cell))
            cols[j].append(v)
        lines.append(line)
        if date_column:
            raw_dates.append(row[dcol] if dcol < len(row) else "")
    ahead = _split_future(cols, names, future, lines, name) if future else 0
    n = len(lines) - ahead
    s = Series([], [], column)
    s.future = {c: cols[names.index(c)][n:] for c in future}
    s.future_dates = raw_dates[n:]
    all_lines, all_dates = lines, raw_dates
    cols, lines, raw_dates = [c[:n] for c in cols], lines[:n], raw_dates[:n]
    if fill == "none" and (g := next((g for g in gaps if g[0] < n), None)):
        raise DataError(
            f"CSV file {name}, line {lines[g[0]]}, column {g[1]!r}: missing value {g[2]!r}; "
            f"{FILL_HINT}"
        )
    if date_column:
        parsed = _check_dates(all_lines, all_dates, name, date_column, n)
        s.freq = ts.infer_frequency(parsed)
        cols, raw_dates = _fill_timestamps(cols, parsed, raw_dates, lines, s.freq, name, fill)
    cols, raw_dates, s.notes = _fill(cols, raw_dates, fill)
    s.values, s.dates = cols[0], raw_dates
    s.covariates = dict(zip(extra, cols[1:], strict=True))
    if not s.values:
        raise DataError(f"CSV file {name}: column {column!r} holds no values")
    return s


def _only(body, i: int, wanted: str):
    for line, row in body:
        if (row[i].strip() if i < len(row) else "") == wanted:
            yield line, row


MAX_SERIES = 10_000


def series_ids(raw: bytes, name: str, id_column: str) -> list[str]:
    """The ids of a long-format file's series, in the order they first appear."""
    header, body, _ = _open(raw, name, id_column, "", ())
    i = header.index(id_column)
    seen: dict[str, None] = {}
    for line, row in body:
        key = row[i].strip() if i < len(row) else ""
        if not key:
            raise DataError(f"CSV file {name}, line {line}: blank id in column {id_column!r}")
        seen[key] = None
        if len(seen) > MAX_SERIES:
            raise DataError(f"CSV file {name}: more than {MAX_SERIES} series in {id_column!r}")
    return list(seen)


def _open(raw: bytes, name: str, column: str, date_column: str, extra):
    """(header, rows after it, the value column) of CSV text ``raw``, every column named
    checked to exist."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"CSV file {name} is not UTF-8 text ({e})") from None
    # a generator: a long file's rows are read once, not held as lists of cells
    rows = _rows(_csv.reader(io.StringIO(text, newline=None)))
    first = next(rows, None)
    if first is None:
        raise DataError(f"CSV file {name} is empty: expected a header row and data rows")
    header = [h.strip() for h in first[1]]
    _check_header(header, name)
    second = next(rows, None)
    if second is None:
        raise DataError(f"CSV file {name} has a header ({', '.join(header)}) but no data rows")
    if not column:
        column = _pick_column(header, [second], date_column, name)
    wanted = [(column, "--column"), (date_column, "--date-column")]
    for want, flag in [*wanted, *((c, "a covariate") for c in extra)]:
        if want and want not in header:
            raise DataError(
                f"CSV file {name} has no column {want!r} ({flag}); its columns are "
                f"{', '.join(repr(h) for h in header)}"
            )
    return header, itertools.chain([second], rows), column


def _cell(cell: str, where: str) -> float | None:
    """The number in ``cell``; None when it is missing (blank, NA, ...)."""
    if cell.lower() in ts.MISSING:
        return None
    try:
        v = float(cell)
    except ValueError:
        raise DataError(f"{where}: expected a number, got {cell!r}") from None
    if not abs(v) <= FLOAT32_MAX:  # NaN, inf, and what float32 would make inf
        raise DataError(
            f"{where}: expected a finite number within float32's range (|x| <= 3.4e38), "
            f"got {cell!r}"
        )
    return v


def _split_future(cols, names, future, lines, name) -> int:
    """How many rows at the end have a blank series cell: the horizon's rows, whose
    future columns must be filled."""
    k = 0
    while k < len(cols[0]) and cols[0][len(cols[0]) - 1 - k] is None:
        k += 1
    for c in future:
        col = cols[names.index(c)]
        for i in range(len(col) - k, len(col)):
            if col[i] is None:
                raise DataError(
                    f"CSV file {name}, line {lines[i]}, column {c!r}: a future feature must "
                    "be given in every row after the last value (it is what the forecast "
                    "reads), got a blank cell"
                )
    return k


def _fill(cols, raw_dates, fill: str):
    """(columns, dates, notes) with every missing value filled (or its row dropped):
    columns are filled one by one, and the rows before every column's first value are
    dropped (nothing to fill them from)."""
    n_missing = sum(v is None for v in cols[0])
    n_cov = sum(v is None for c in cols[1:] for v in c)
    if not n_missing and not n_cov:
        return cols, raw_dates, ""
    notes = []
    if n_missing:
        notes.append(f"{n_missing} missing value(s) {'dropped' if fill == 'drop' else fill}")
    if n_cov:
        notes.append(f"{n_cov} missing covariate value(s) {'dropped' if fill == 'drop' else fill}")
    n = len(cols[0])
    if fill == "drop":
        keep = [i for i in range(n) if all(c[i] is not None for c in cols)]
        dates = [raw_dates[i] for i in keep] if raw_dates else []
        return [[c[i] for i in keep] for c in cols], dates, "; ".join(notes)
    filled = [ts.fill_missing(c, fill) for c in cols]
    start = max(kept[0] for _, kept in filled)
    if start:
        notes.append(f"{start} leading missing value(s) dropped")
    out = [f[start - kept[0] :] for f, kept in filled]
    return out, raw_dates[start:] if raw_dates else [], "; ".join(notes)


FILL_HINT = "pass --fill ffill, interpolate or drop"


def _rows(reader):
    """(line, cells) of every row after the leading blank lines: a blank line between rows
    is a row of missing values (in a one-column file, a blank cell); blank lines at the
    end are not rows."""
    blanks, started = [], False
    for line, cells in enumerate(reader, 1):
        if not any(c.strip() for c in cells):
            if started:
                blanks.append((line, [""]))
            continue
        started = True
        yield from blanks
        blanks = []
        yield line, cells


def _check_header(header: list[str], name: str) -> None:
    seen: dict[str, int] = {}
    for i, h in enumerate(header, 1):
        if h in seen:
            raise DataError(
                f"CSV file {name} has two columns named {h!r} (columns {seen[h]} and {i}); "
                "rename one"
            )
        seen[h] = i


def _fill_timestamps(cols, parsed, raw_dates, lines, freq, name, fill):
    """Columns and dates with a None row inserted for every missing timestamp (ffill and
    interpolate); a DataError naming the line without --fill; as they are under drop."""
    if not freq.missing or fill == "drop":
        return cols, raw_dates
    out_c, out_d = [[c[0]] for c in cols], [raw_dates[0]]
    for i in range(1, len(raw_dates)):
        k = freq.steps_between(parsed[i - 1], parsed[i])
        gap = round(k) - 1 if k >= 0 and abs(k - round(k)) <= 0.05 else 0
        if gap > 0 and fill == "none":
            raise DataError(
                f"CSV file {name}, line {lines[i]}: {gap} {freq.name} timestamp(s) missing "
                f"before {raw_dates[i]!r}; {FILL_HINT}"
            )
        for j in range(1, gap + 1):
            d = ts.add_steps(parsed[i - 1], freq.name, freq.step_s, j)
            for c in out_c:
                c.append(None)
            out_d.append(ts.format_like(d, raw_dates[i]))
        for c, src in zip(out_c, cols, strict=True):
            c.append(src[i])
        out_d.append(raw_dates[i])
    return out_c, out_d


def _pick_column(header, body, date_column, name) -> str:
    """The one column (besides the date column) whose first value is a number."""
    first = body[0][1]
    numeric = [h for i, h in enumerate(header) if h != date_column and _is_number(first, i)]
    if len(numeric) != 1:
        raise ConfigError(
            f"CSV file {name}: pass --column, one of {', '.join(repr(h) for h in header)} "
            f"({len(numeric)} columns look numeric)"
        )
    return numeric[0]


def _is_number(row: list[str], i: int) -> bool:
    try:
        float(row[i])
    except (ValueError, IndexError):
        return False
    return True


def _check_dates(lines, raw_dates, name, date_column, n: int) -> list:
    """The first ``n`` dates parsed (the series'), every one of ``raw_dates`` (the future
    rows' too) checked to increase."""
    out = []
    for line, raw in zip(lines, raw_dates, strict=True):
        d = ts.parse_date(raw, f"CSV file {name}, line {line}, column {date_column!r}")
        if out and d <= out[-1]:
            raise DataError(
                f"CSV file {name}, line {line}: dates must increase, got {raw!r} after "
                f"{raw_dates[len(out) - 1]!r}"
            )
        out.append(d)
    return out[:n]


def read_series(path: str, column: str = "", date_column: str = "", fill: str = "none"):
    """The values of ``column`` in CSV file ``path`` ("" = the packaged airline series)."""
    return read(path, column, date_column, fill).values


def read(
    path: str,
    column: str = "",
    date_column: str = "",
    fill: str = "none",
    extra: tuple[str, ...] = (),
    future: tuple[str, ...] = (),
) -> Series:
    """The :class:`Series` of ``column`` in CSV file ``path`` ("" = the packaged series)."""
    raw, name = _source(path)
    return load(raw, name, column, date_column, fill, extra, future)
