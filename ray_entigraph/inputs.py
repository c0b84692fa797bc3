"""Reading the user's input: built-in corpora, listing input files, and records from one file.

Inputs are JSON Lines, Parquet, or folders of .txt/.md files, local or on any fsspec URL. Every problem
with an input (an empty file, bytes that are not UTF-8, a bad JSON line, a corrupt Parquet file) becomes an
error record, so it is counted and visible, never silently dropped. Used by ingest, evaluation (questions,
perplexity texts) and training (replay corpora); listing is done once per run, on the driver, before any
worker starts.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from ray_entigraph import storage
from ray_entigraph.config import InputConfig
from ray_entigraph.demo.replay import stdlib_docstrings_path
from ray_entigraph.errors import InputError
from ray_entigraph.text.conditions import MissingColumn, first_failing, parse_conditions

__all__ = ["DEMO_CORPUS", "InputError", "list_input_files", "records_from_file", "resolve_input_path"]

_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text", ".md": "text"}
DEMO_CORPUS = Path(__file__).resolve().parent / "demo" / "quality_demo.jsonl"
# the knowledge benchmark's splits (documents and their questions), written by ray_entigraph.demo.knowledge
KNOWLEDGE_SPLITS = {f"builtin:knowledge-{split}": Path(__file__).resolve().parent / "demo" / f"knowledge_{split}.jsonl"
                    for split in ("dev", "test")}


def resolve_input_path(path: str) -> str:
    """Built-in inputs: `builtin:demo` (the demo corpus), `builtin:knowledge-dev` and `builtin:knowledge-test`
    (the knowledge benchmark's splits), `builtin:stdlib-docs` (a replay corpus) and `builtin:stdlib-docs-heldout`
    (held-out general text for the forgetting perplexity)."""
    if path == "builtin:demo":
        return str(DEMO_CORPUS)
    if path in KNOWLEDGE_SPLITS:
        return str(KNOWLEDGE_SPLITS[path])
    if path in ("builtin:stdlib-docs", "builtin:stdlib-docs-heldout"):
        return stdlib_docstrings_path(split="train" if path == "builtin:stdlib-docs" else "heldout")
    return path


def list_input_files(cfg: InputConfig) -> list[tuple[str, str]]:
    """(url, format) of every input file, checked on the driver before any worker starts."""
    if not cfg.path.strip():
        raise InputError("The input path is empty (it would mean the current folder). Fix: set input.path to a "
                         "file, folder or glob.")
    url = resolve_input_path(cfg.path)
    fs, path = storage.filesystem(url)
    if any(ch in path for ch in "*?["):
        found = sorted(fs.glob(path))
        prefix = url.split("://")[0] + "://" if "://" in url else ""
        candidates = [prefix + p for p in found]
    elif not fs.exists(path):
        raise InputError(f"Input path {cfg.path!r} does not exist. "
                         "Fix: set input.path to a file, folder or glob that exists.")
    elif fs.isdir(path):
        prefix = url.split("://")[0] + "://" if "://" in url else ""
        candidates = sorted(prefix + p for p in fs.find(path))
    else:
        candidates = [url]
    files = []
    for cand in candidates:
        ext = Path(cand).suffix.lower()
        fmt = cfg.format if cfg.format != "auto" else _EXTENSIONS.get(ext)
        if fmt is None or Path(cand).name.startswith("."):
            continue
        files.append((cand, fmt))
    if not files:
        raise InputError(
            f"No input files under {cfg.path!r} (looked for {', '.join(sorted(_EXTENSIONS))}). "
            "Fix: point input.path at such files, or set input.format."
        )
    return files


def _strip_html(text: str) -> str:
    if not re.search(r"<(p|br|div|span|h\d)\b", text, re.I):
        return text
    text = re.sub(r"<\s*br\s*/?>|</p>", "\n", text, flags=re.I)
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"\n{3,}", "\n\n", text)


def records_from_file(url: str, fmt: str, cfg: InputConfig) -> list[dict]:
    """Raw records (title, text, metadata) or error records from one input file. Pure apart from reading."""
    data = storage.read_bytes(url)
    name = Path(url).name
    if not data.strip():
        return [{"source": url, "error": f"empty file: {name} has no content. Fix: remove it or fill it."}]
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(io.BytesIO(data)).to_pylist()
        except (pa.ArrowException, OSError, ValueError) as exc:  # truncated, corrupt or not Parquet at all
            problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            problem = re.sub(r"^Could not open Parquet input source '[^']*': ", "", problem)[:200]
            return [{"source": url, "error": f"not a readable Parquet file: {name} ({problem}). Fix: re-export "
                     "the file, or remove it from input.path."}]
        return [_record_from_mapping(r, url, f"row {i}", cfg) for i, r in enumerate(rows)]
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [{
            "source": url,
            "error": f"not valid UTF-8: {name} has byte 0x{data[exc.start]:02x} at offset {exc.start}. "
            "Fix: re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).",
        }]
    if fmt == "text":
        return [{"source": url, "title": Path(url).stem, "text": decoded, "metadata": {}}]
    if Path(url).suffix.lower() == ".json" and decoded.lstrip().startswith("["):
        return _records_from_array(decoded, url, name, cfg)
    out = [record for lineno, line in enumerate(json_lines(decoded), 1)
           if (record := _record_from_line(line, url, f"{url}:{lineno}", f"line {lineno}", cfg)) is not None]
    return out or [{"source": url, "error": f"empty file: {name} has no JSON records."}]


def _record_from_line(line: str, url: str, source: str, where: str, cfg: InputConfig) -> dict | None:
    """One JSON Lines line as a record, an error record naming `where` it is, or None for a blank line."""
    if not line.strip():
        return None
    name = Path(url).name
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return {"source": source, "error": f"invalid JSON on {where} of {name}: {exc.msg}"}
    if not isinstance(obj, dict):
        return {"source": source, "error": f"{where} of {name} is not a JSON object"}
    return _record_from_mapping(obj, url, where, cfg)


SPLITTABLE = ("jsonl", "parquet")  # formats whose files are read in byte ranges (ingest.bytes_per_task)


def splittable(url: str, fmt: str) -> bool:
    """Whether a file can be read in byte ranges: JSON Lines (not a .json array) and Parquet."""
    return fmt in SPLITTABLE and not (fmt == "jsonl" and Path(url).suffix.lower() == ".json")


def records_from_range(url: str, fmt: str, cfg: InputConfig, start: int, end: int) -> list[dict]:
    """The records of one byte range [start, end) of a large file, so that many tasks share it and none reads
    it whole: for JSON Lines the lines that start in the range (the line across `start` belongs to the range
    before), for Parquet the row groups whose first byte is in it (their column chunks read alone). Every
    record and line of the file falls in exactly one of the ranges that tile it."""
    name = Path(url).name
    fs, path = storage.filesystem(url)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            with fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                groups = [i for i in range(pf.metadata.num_row_groups) if start <= _group_start(pf.metadata, i) < end]
                rows = pf.read_row_groups(groups).to_pylist() if groups else []
        except (pa.ArrowException, OSError, ValueError) as exc:
            problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            return [{"source": f"{url} bytes {start}-{end}", "error": f"not a readable Parquet file: {name} "
                     f"({problem}). Fix: re-export the file, or remove it from input.path."}]
        return [_record_from_mapping(r, url, f"row group {groups[0]}+ row {i}", cfg) for i, r in enumerate(rows)]
    out = []
    with fs.open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            f.readline()  # the rest of the line that holds byte start-1: the range before reads it
        pos = f.tell()
        while pos < end:
            line = f.readline()
            if not line:
                break
            where, at = f"line at byte {pos}", pos
            pos += len(line)
            try:
                text = line.decode("utf-8").removesuffix("\n").removesuffix("\r")
            except UnicodeDecodeError as exc:
                out.append({"source": f"{url}@{at}", "error": f"not valid UTF-8: {name} has byte "
                            f"0x{line[exc.start]:02x} at offset {at + exc.start}. Fix: re-encode the file as UTF-8."})
                continue
            record = _record_from_line(text, url, f"{url}@{at}", where, cfg)
            if record is not None:
                out.append(record)
    return out


def _group_start(metadata, i: int) -> int:
    """The first byte of row group i: its first column chunk's dictionary page, else its first data page."""
    col = metadata.row_group(i).column(0)
    offsets = [o for o in (col.dictionary_page_offset, col.data_page_offset) if o is not None and o > 0]
    return min(offsets) if offsets else 4


def json_lines(text: str) -> list[str]:
    """The lines of a JSON Lines text. Only \\n ends a line (\\r\\n too): U+2028, U+2029 and U+0085 may
    occur inside a JSON string, where `str.splitlines` would cut a valid record in two."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _records_from_array(decoded: str, url: str, name: str, cfg: InputConfig) -> list[dict]:
    """A .json file holding one array of records (the other layout `datasets` writes)."""
    try:
        items = json.loads(decoded)
    except json.JSONDecodeError as exc:
        return [{"source": url, "error": f"invalid JSON in {name} at line {exc.lineno}: {exc.msg}"}]
    out = [_record_from_mapping(obj, url, f"item {i}", cfg) if isinstance(obj, dict) else
           {"source": f"{url} item {i}", "error": f"item {i} of {name} is not a JSON object"}
           for i, obj in enumerate(items)]
    return out or [{"source": url, "error": f"empty file: {name} holds an empty array."}]


def _record_from_mapping(obj: dict, url: str, where: str, cfg: InputConfig) -> dict:
    if cfg.where:  # input.where: a record left out is marked, so ingest counts it
        try:
            failing = first_failing(parse_conditions(tuple(cfg.where)), obj)
        except MissingColumn as exc:
            return {"source": f"{url} {where}", "error": f"input.where names column {exc.args[0]!r}, which {where} "
                    f"of {Path(url).name} does not have. Fix: add the column, or change input.where."}
        if failing is not None:
            return {"source": f"{url} {where}", "filtered": failing.text}
    field = cfg.text_field if cfg.text_field in obj else ("article" if "article" in obj else None)
    if field is None or not isinstance(obj.get(field), str):
        return {"source": f"{url} {where}",
                "error": f"no text: {where} has no string field {cfg.text_field!r}. Fix: set input.text_field."}
    meta = {k: v for k, v in obj.items() if k not in (field, cfg.title_field)}
    title = obj.get(cfg.title_field)
    return {"source": url, "title": str(title) if title else Path(url).stem, "text": _strip_html(obj[field]),
            "metadata": meta}
