"""Job records from a file, for ``balsam job create --from FILE``: YAML (a list of mappings), CSV (a header
row), JSON Lines (one object per line) or JSON (a list).

Each record has the fields of ``balsam job create``, by their long names (``workdir``, ``app``,
``parameters``, ``tags``, ``num_nodes``, ``ranks_per_node``, ``threads_per_rank``, ``threads_per_core``,
``gpus_per_rank``, ``node_packing_count``, ``launch_params``, ``wall_time_min``, ``parent_ids``, ``data``,
``transfers``) or their short flags (``a``, ``n``, ``rpn``, ``tpr``, ``tpc``, ``g``, ``npc``, ``lp``, ``t``,
``pid``). A flat file spells dict entries as prefixed columns: ``param.NAME``, ``tag.NAME``, ``lp.NAME``,
``data.NAME``, ``stage.SLOT``; a CSV cell may also hold a JSON object, or ``k=v;k2=v2``. Every error names
the file and the line (or record) it comes from.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from balsam import yamlsafe
from balsam.cli._common import CLIError

DICT_FIELDS = ("parameters", "tags", "launch_params", "data", "transfers")
INT_FIELDS = ("num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core", "node_packing_count", "wall_time_min")
FIELDS = ("workdir", "app", *DICT_FIELDS, *INT_FIELDS, "gpus_per_rank", "parent_ids")
ALIASES = {
    "a": "app", "app_name": "app", "app_id": "app", "w": "workdir", "params": "parameters", "param": "parameters", "p": "parameters",
    "tag": "tags", "n": "num_nodes", "rpn": "ranks_per_node", "tpr": "threads_per_rank", "tpc": "threads_per_core",
    "g": "gpus_per_rank", "npc": "node_packing_count", "lp": "launch_params", "launch_param": "launch_params",
    "t": "wall_time_min", "pid": "parent_ids", "parent_id": "parent_ids", "parents": "parent_ids", "stage_data": "transfers",
}
PREFIXES = {"param.": "parameters", "p.": "parameters", "tag.": "tags", "lp.": "launch_params", "data.": "data",
            "stage.": "transfers", "transfer.": "transfers"}
FORMATS = ("yaml", "csv", "jsonl", "json")
MAX_YAML_VALUES = 1_000_000
"""Most values a YAML job file may expand to (aliases counted each time they are used)."""

Record = Tuple[str, Dict[str, Any]]
"""(where: "line 7" or "record 3", fields)"""


def detect_format(path: str, given: Optional[str]) -> str:
    """The file format: ``given``, else from the extension."""
    if given:
        return given
    suffix = Path(path).suffix.lower()
    for fmt, suffixes in (("yaml", (".yml", ".yaml")), ("csv", (".csv",)), ("jsonl", (".jsonl", ".ndjson")), ("json", (".json",))):
        if suffix in suffixes:
            return fmt
    raise CLIError(f"{path}: cannot tell the format from the extension; pass --format ({', '.join(FORMATS)})", 2)


def read_text(path: str) -> str:
    import sys

    # A byte order mark (Excel's "CSV UTF-8", Notepad) is no part of the text: it made the first column an unknown field
    # ('\ufeffapp') and JSON invalid.
    if path == "-":
        return sys.stdin.read().lstrip("\ufeff")
    try:
        if stat.S_ISCHR(os.stat(path).st_mode) or stat.S_ISBLK(os.stat(path).st_mode):  # /dev/zero would be read forever
            raise CLIError(f"{path}: a device, not a file of jobs", 2)
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file", 2) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"{path}: cannot read it: {exc}", 2) from None


def read_records(path: str, fmt: str) -> List[Record]:
    """Every record in the file, each with where it starts."""
    text = read_text(path)
    reader = {"yaml": _yaml_records, "csv": _csv_records, "jsonl": _jsonl_records, "json": _json_records}[fmt]
    return list(reader(path, text))


MAX_YAML_DEPTH = 64
"""Deepest nesting of a YAML job file (libyaml's own composer recurses in C without a bound: a file of 100,000
nested brackets crashed the process with a segmentation fault)."""


def _yaml_records(path: str, text: str) -> Iterator[Record]:
    import yaml
    from yaml.events import DocumentStartEvent, ScalarEvent, SequenceEndEvent, SequenceStartEvent, StreamEndEvent

    loader = yamlsafe.loader(text, max_depth=MAX_YAML_DEPTH, max_values=MAX_YAML_VALUES, unique_keys=True)
    try:
        loader.get_event()  # the stream's start
        if loader.check_event(DocumentStartEvent):
            loader.get_event()
        if loader.check_event(StreamEndEvent):
            return
        if not loader.check_event(SequenceStartEvent):
            event = loader.peek_event()
            if isinstance(event, ScalarEvent) and event.value == "" and event.tag is None:
                return  # an empty document ("---" alone)
            raise CLIError(f"{path} line {event.start_mark.line + 1}: expected a list of jobs (lines starting with '- ')", 2)
        loader.get_event()
        total = 0
        index = 0
        while not loader.check_event(SequenceEndEvent):
            node = loader.compose_node(None, index)
            index += 1
            where = f"line {node.start_mark.line + 1}"
            total += node.balsam_size
            if total > MAX_YAML_VALUES:
                raise CLIError(f"{path} {where}: the file expands to more than {MAX_YAML_VALUES:,} values (YAML aliases "
                               "referring to aliases?); write the jobs out, or use JSON Lines", 2)
            value = loader.construct_object(node, deep=True)
            if not isinstance(value, dict):
                raise CLIError(f"{path} {where}: expected a mapping of job fields, got {type(value).__name__}", 2)
            yield where, value
        loader.get_event()  # the list's end
        loader.get_event()  # the document's end
        if not loader.check_event(StreamEndEvent):
            raise CLIError(f"{path} line {loader.peek_event().start_mark.line + 1}: expected one list of jobs, found another document", 2)
    except yamlsafe.TooMany as exc:
        raise CLIError(f"{path} line {exc.line}: the file expands to more than {MAX_YAML_VALUES:,} values (YAML aliases "
                       "referring to aliases?); write the jobs out, or use JSON Lines", 2) from None
    except yamlsafe.DuplicateKey as exc:
        raise CLIError(f"{path} line {exc.line}: not valid YAML: {exc.what}", 2) from None
    except yamlsafe.Refused as exc:
        raise CLIError(f"{path} line {exc.line}: {exc.what}", 2) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        if "nesting depth" in str(problem):  # PyYAML >= 6.0.4 bounds the depth itself, before our composer does
            raise CLIError(f"{path}{at}: nested more than {MAX_YAML_DEPTH} levels deep", 2) from None
        raise CLIError(f"{path}{at}: not valid YAML: {problem}", 2) from None
    finally:
        loader.dispose()


def _csv_records(path: str, text: str) -> Iterator[Record]:
    import csv
    import io

    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise CLIError(f"{path} line 1: {exc}", 2) from None
    header = [h.strip() for h in header]
    if not any(header):
        raise CLIError(f"{path} line 1: expected a header row naming the fields", 2)
    for n, name in enumerate(header):
        if name and name in header[:n]:
            raise CLIError(f"{path} line 1: the column {name!r} is given twice", 2)
    start = reader.line_num + 1
    try:
        for row in reader:
            where = f"line {start}"
            start = reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise CLIError(f"{path} {where}: {len(row)} cells, but the header has {len(header)}", 2)
            yield where, {h: c for h, c in zip(header, row) if c != ""}
    except csv.Error as exc:
        raise CLIError(f"{path} line {reader.line_num}: {exc}", 2) from None


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        for key, _value in pairs:
            if key in seen:
                raise ValueError(f"the key {key!r} is given twice")
            seen.add(key)
    return out


def loads(text: str) -> Any:
    """``json.loads``, with a document nested past Python's recursion limit, or an object that names a key twice (the
    json module kept the last silently), refused as invalid (ValueError)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _jsonl_records(path: str, text: str) -> Iterator[Record]:
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            value = loads(stripped)
        except ValueError as exc:
            raise CLIError(f"{path} line {n}: not valid JSON: {exc}", 2) from None
        if not isinstance(value, dict):
            raise CLIError(f"{path} line {n}: expected a JSON object of job fields", 2)
        yield f"line {n}", value


def _json_records(path: str, text: str) -> Iterator[Record]:
    try:
        value = loads(text)
    except ValueError as exc:
        raise CLIError(f"{path}: not valid JSON: {exc}", 2) from None
    if not isinstance(value, list):
        raise CLIError(f"{path}: expected a JSON list of job objects", 2)
    for n, item in enumerate(value, 1):
        if not isinstance(item, dict):
            raise CLIError(f"{path} record {n}: expected a JSON object of job fields", 2)
        yield f"record {n}", item


# ------------------------------------------------------------------------------------------- normalizing
def _brief(value: Any) -> str:
    """``repr(value)`` in a few dozen characters: a value refused by name may be a list of a million items (a 200,000
    item list for num_nodes made a 2 MB error line)."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxdict, short.maxset, short.maxstring, short.maxother = 2, 5, 5, 5, 5, 60, 60
    text = short.repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _cell_dict(value: Any, field: str) -> Dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            parsed = loads(text)
            if isinstance(parsed, dict):
                return parsed
        out: Dict[str, Any] = {}
        for item in text.split(";"):
            if item.strip():
                k, sep, v = item.partition("=")
                if not sep:
                    raise ValueError(f"{field}: {_brief(item)} is not KEY=VALUE")
                if k.strip() in out:
                    raise ValueError(f"{field}: the key {k.strip()!r} is given twice")
                out[k.strip()] = v
        return out
    raise ValueError(f"{field}: expected a mapping, got {_brief(value)}")


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected an integer, got {_brief(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdecimal():  # not isdigit(): "²" is a digit int() refuses
        return int(value)
    raise ValueError(f"{field}: expected an integer, got {_brief(value)}")


def _parents(value: Any) -> List[int]:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        text = str(value).strip()
        if text.startswith("["):
            value = loads(text)
        else:
            value = [p for p in text.replace(";", " ").replace(",", " ").split() if p]
    if not isinstance(value, list):
        raise ValueError(f"parent_ids: expected a list of job ids, got {_brief(value)}")
    return [_int(p, "parent_ids") for p in value]


def normalize(record: Dict[str, Any]) -> Dict[str, Any]:
    """A record's fields under their canonical names, with flat columns folded into dicts; ValueError if bad."""
    out: Dict[str, Any] = {}
    named: Dict[str, str] = {}  # each field or dict entry: the key that gave it (a second one is refused, not kept silently)

    def give(field: str, name: str, key: str) -> None:
        if field in named:
            if named[field] == key:  # within one value: keys equal once written as text (1 and "1")
                raise ValueError(f"{name} is given twice in {key!r}")
            raise ValueError(f"{key!r} gives {name} again (after {named[field]!r})")
        named[field] = key

    for raw_key, value in record.items():
        key = str(raw_key).strip()
        for prefix, field in PREFIXES.items():
            if key.startswith(prefix) and len(key) > len(prefix):
                entry = key[len(prefix):]
                give(f"{field}.{entry}", f"{field} entry {entry!r}", key)
                out.setdefault(field, {})[entry] = value
                break
        else:
            field = ALIASES.get(key, key)
            if field not in FIELDS:
                raise ValueError(f"unknown field {key!r} (fields: {', '.join(FIELDS)}; or param.NAME, tag.NAME, lp.NAME, data.NAME columns)")
            if value is None:
                continue
            if field in DICT_FIELDS:
                entries = _cell_dict(value, field)
                for entry in entries:
                    give(f"{field}.{entry}", f"{field} entry {entry!r}", key)
                out.setdefault(field, {}).update(entries)
                continue
            give(field, field, key)
            if field in INT_FIELDS:
                out[field] = _int(value, field)
            elif field == "gpus_per_rank":
                try:
                    out[field] = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"gpus_per_rank: expected a number, got {_brief(value)}") from None
            elif field == "parent_ids":
                out[field] = _parents(value)
            else:
                out[field] = str(value) if field == "workdir" else value
    for field in ("tags", "launch_params"):
        if field in out:
            out[field] = {str(k): str(v) for k, v in out[field].items()}
    return out
