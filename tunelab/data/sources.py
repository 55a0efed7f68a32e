"""Read raw rows from a data source: hub dataset, local dir, one file, or `synthetic:arith`.

Each row comes back as `Row(id, where, fields)`: `where` names the file and line (or the split and
row) so that a malformed row can be reported precisely.

Run as: tunelab train gsm8k-smollm2-135m --set data.source=../shared/data/gsm8k
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import UserError

FILE_KINDS = (".jsonl", ".json", ".csv", ".parquet")
SYNTHETIC = "synthetic:arith"
HUB_PREFIX = "hub:"
VALIDATION_ALIASES = ("val", "valid", "dev")
SCORED_SPLITS = {"test", "validation"}  # a source only scored (eval.source) may have one of these alone


@dataclass
class Row:
    id: str  # stable across runs: split name + source row number
    where: str  # "train.jsonl:17" or "hub openai/gsm8k train row 17"
    fields: dict


@dataclass
class BadRow:
    where: str
    problem: str  # read problems (bad JSON); field problems are found later by the template


def short_name(source: str) -> str:
    """What a source is called in row ids and the report: a file's or folder's name without its extension, a hub
    dataset's name without its owner (`openai/gsm8k` -> gsm8k), `synthetic-arith`."""
    if source == SYNTHETIC:
        return "synthetic-arith"
    name = source.removeprefix(HUB_PREFIX).rstrip("/").rsplit("/", 1)[-1]
    return name[:-len(suffix)] if (suffix := next((k for k in FILE_KINDS if name.endswith(k)), "")) else name


def read_source(source: str, config: str | None, synthetic_rows: int, synthetic_test_rows: int,
                seed: int, need_train: bool = True) -> tuple[dict[str, list[Row]], list[BadRow]]:
    """Rows per split name ("train", "test", maybe "validation") and the rows that could not be read.
    `need_train`: False for a source only scored (eval.source), which may have a test or validation split alone.

    Raises:
        UserError: the source does not exist or has no train split (when `need_train`).
    """
    if source == SYNTHETIC:
        from tunelab.data.synthetic import generate
        splits = {"train": generate(synthetic_rows, seed), "test": generate(synthetic_test_rows, seed + 1_000_003)}
        return {name: [Row(f"{name}-{i}", f"{source} {name} row {i}", r) for i, r in enumerate(rows)]
                for name, rows in splits.items() if rows}, []
    if source.startswith(HUB_PREFIX):
        return _read_hub(source[len(HUB_PREFIX):], config, need_train), []
    path = Path(source)
    if path.is_file():
        rows, bad = _read_file(path, "train")
        return {"train": rows}, bad
    if path.is_dir():
        return _read_dir(path, config, need_train)
    if source.startswith((".", "/")) or source.endswith(FILE_KINDS):
        raise UserError(f"data.source: {source}: no such file or directory")
    return _read_hub(source, config, need_train), []


def _read_dir(path: Path, config: str | None, need_train: bool) -> tuple[dict[str, list[Row]], list[BadRow]]:
    if (path / "dataset_dict.json").is_file():  # a datasets.DatasetDict.save_to_disk folder
        import datasets
        return _from_dataset_dict(datasets.load_from_disk(str(path)), str(path), need_train), []
    splits, bad = {}, []
    found = {name: files[0] for name in ("train", "validation", "test", *VALIDATION_ALIASES)
             if (files := [path / f"{name}{ext}" for ext in FILE_KINDS if (path / f"{name}{ext}").is_file()])}
    for name, file in found.items():
        key = _split_key(name, found)
        if key not in splits:  # val.jsonl beside dev.jsonl, neither validation: the first one is
            splits[key], bad_rows = _read_file(file, key)
            bad += bad_rows
    if "train" not in splits and (need_train or not splits.keys() & SCORED_SPLITS):
        wanted = "train" if need_train else "train, test or validation"
        raise UserError(f"data.source: {path}: no {wanted} file (expected {wanted}.jsonl, .json, .csv or .parquet)")
    return splits, bad


def _read_hub(dataset_id: str, config: str | None, need_train: bool) -> dict[str, list[Row]]:
    """`datasets.load_dataset(id, config)`: the hub (users have it) or a local datasets folder."""
    import datasets
    try:
        dd = datasets.load_dataset(dataset_id, config)
    except FileNotFoundError as err:
        raise UserError(f"data.source: {dataset_id}: dataset not found ({err})") from None
    except Exception as err:  # the hub client raises many kinds; all mean "could not load this id"
        raise UserError(f"data.source: {dataset_id} (config {config}): could not load: {err}; a folder holding "
                        f"train.jsonl and test.jsonl (or .json, .csv, .parquet) works as the source too") from None
    return _from_dataset_dict(dd, f"hub {dataset_id}", need_train)


def _from_dataset_dict(dd, label: str, need_train: bool) -> dict[str, list[Row]]:
    splits = {}
    for name in dd:
        key = _split_key(name, dd)
        splits[key] = [Row(f"{key}-{i}", f"{label} {name} row {i}", dict(r)) for i, r in enumerate(dd[name])]
    if "train" not in splits and (need_train or not splits.keys() & SCORED_SPLITS):
        raise UserError(f"data.source: {label}: has splits {sorted(splits)}, but no train "
                        f"{'split' if need_train else 'test or validation split'}")
    return splits


def _split_key(name: str, names) -> str:
    """The split name a source's split is read as: `val`, `valid` or `dev` is its validation split when it has none
    by that name; MMLU has both `validation` and `dev` (its few-shot rows), and keeps both."""
    if name in VALIDATION_ALIASES and "validation" not in names:
        return "validation"
    return name


def _read_file(path: Path, split: str) -> tuple[list[Row], list[BadRow]]:
    """The rows of one data file; a file that is not UTF-8 text (a spreadsheet's cp1252 export) is refused naming
    the line of its first undecodable byte."""
    try:
        return _read_by_kind(path, split)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _not_utf8(path: Path) -> UserError:
    for lineno, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            return UserError(f"{path}:{lineno}: not UTF-8 text (byte 0x{line[err.start]:02x} at column "
                             f"{err.start + 1}); save the file as UTF-8")
    return UserError(f"{path}: not UTF-8 text; save the file as UTF-8")


def _read_by_kind(path: Path, split: str) -> tuple[list[Row], list[BadRow]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, split)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a spreadsheet's byte-order mark
        except json.JSONDecodeError as err:
            if "Extra data" in str(err):  # JSON Lines saved as .json
                return _read_jsonl(path, split)
            raise UserError(f"{path}:{err.lineno}: bad JSON: {err.msg}") from None
        if isinstance(data, dict) and split in data:
            data = data[split]
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a list of objects")
        return _rows_from_records(data, path, split, "item")
    if suffix == ".csv":
        return _read_csv(path, split), []
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
        except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise UserError(f"data.source: {path}: not a readable Parquet file ({err})") from None
        return _rows_from_records(table.to_pylist(), path, split, "row")
    raise UserError(f"data.source: {path}: unsupported file type {suffix or '(none)'}; "
                    f"use one of {', '.join(FILE_KINDS)}")


def _rows_from_records(records: list, path: Path, split: str, unit: str) -> tuple[list[Row], list[BadRow]]:
    rows, bad = [], []
    for i, r in enumerate(records):
        if isinstance(r, dict):
            rows.append(Row(f"{split}-{i}", f"{path} {unit} {i}", r))
        else:
            bad.append(BadRow(f"{path} {unit} {i}", f"expected an object, got {type(r).__name__}"))
    return rows, bad


def _read_csv(path: Path, split: str) -> list[Row]:
    """CSV as spreadsheets and Windows editors write it: a byte-order mark, CRLF line ends, blank lines and
    quoted fields (commas, quotes, line breaks inside) are read as meant; a CRLF inside a field becomes \\n.
    `where` is the line the record starts on (the header is line 1)."""
    rows = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        start = 2
        for i, record in enumerate(reader):
            fields = {k: v.replace("\r\n", "\n") if isinstance(v, str) else v for k, v in record.items()}
            rows.append(Row(f"{split}-{i}", f"{path}:{start}", fields))
            start = reader.line_num + 1
    return rows


def _read_jsonl(path: Path, split: str) -> tuple[list[Row], list[BadRow]]:
    rows, bad = [], []
    with path.open(encoding="utf-8-sig") as f:  # -sig: a byte-order mark at the start is not part of line 1
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                bad.append(BadRow(where, f"bad JSON: {err.msg} (column {err.colno})"))
                continue
            if not isinstance(record, dict):
                bad.append(BadRow(where, f"expected a JSON object, got {type(record).__name__}"))
                continue
            rows.append(Row(f"{split}-{lineno}", where, record))
    return rows, bad
