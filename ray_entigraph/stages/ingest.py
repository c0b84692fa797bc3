"""Ingest: source files -> documents (doc_id, title, text, chunks, token counts), committed per input file.

Inputs are JSON Lines, Parquet, or folders of .txt/.md files, local or on any fsspec URL. Every problem
with an input (an empty file, bytes that are not UTF-8, a bad JSON line, a document too short) becomes a
documents row with `error` set, so it is counted and visible, never silently dropped.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

from ray_entigraph import schema, storage
from ray_entigraph.config import EntiGraphConfig, InputConfig
from ray_entigraph.stages.common import commit_unit, shard_identity
from ray_entigraph.text.chunk import split_document
from ray_entigraph.text.identity import doc_id_for, normalise_text

_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text", ".md": "text"}
DEMO_CORPUS = Path(__file__).resolve().parent.parent / "demo" / "quality_demo.jsonl"


class InputError(ValueError):
    """The configured input cannot be read; the message says why and how to fix it."""


def resolve_input_path(path: str) -> str:
    """Built-in inputs: `builtin:demo` (the demo corpus), `builtin:stdlib-docs` (a replay corpus) and
    `builtin:stdlib-docs-heldout` (held-out general text for the forgetting perplexity)."""
    if path == "builtin:demo":
        return str(DEMO_CORPUS)
    if path in ("builtin:stdlib-docs", "builtin:stdlib-docs-heldout"):
        from ray_entigraph.demo.replay import stdlib_docstrings_path

        return stdlib_docstrings_path(split="train" if path == "builtin:stdlib-docs" else "heldout")
    return path


def list_input_files(cfg: InputConfig) -> list[tuple[str, str]]:
    """(url, format) of every input file, checked on the driver before any worker starts."""
    url = resolve_input_path(cfg.path)
    fs, path = storage.filesystem(url)
    if any(ch in path for ch in "*?["):
        found = sorted(fs.glob(path))
        prefix = url.split("://")[0] + "://" if "://" in url else ""
        candidates = [prefix + p for p in found]
    elif not fs.exists(path):
        raise InputError(f"Input path {cfg.path!r} does not exist. Fix: set input.path to a file, folder or glob that exists.")
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
        import pyarrow.parquet as pq

        rows = pq.read_table(io.BytesIO(data)).to_pylist()
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
    out = []
    for lineno, line in enumerate(decoded.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append({"source": f"{url}:{lineno}", "error": f"invalid JSON on line {lineno} of {name}: {exc.msg}"})
            continue
        if not isinstance(obj, dict):
            out.append({"source": f"{url}:{lineno}", "error": f"line {lineno} of {name} is not a JSON object"})
            continue
        out.append(_record_from_mapping(obj, url, f"line {lineno}", cfg))
    return out or [{"source": url, "error": f"empty file: {name} has no JSON records."}]


def _record_from_mapping(obj: dict, url: str, where: str, cfg: InputConfig) -> dict:
    field = cfg.text_field if cfg.text_field in obj else ("article" if "article" in obj else None)
    if field is None or not isinstance(obj.get(field), str):
        return {"source": f"{url} {where}", "error": f"no text: {where} has no string field {cfg.text_field!r}. Fix: set input.text_field."}
    meta = {k: v for k, v in obj.items() if k not in (field, cfg.title_field)}
    title = obj.get(cfg.title_field)
    return {"source": url, "title": str(title) if title else Path(url).stem, "text": _strip_html(obj[field]), "metadata": meta}


def documents_from_record(record: dict, *, max_tokens: int, min_chars: int, count_tokens) -> list[dict]:
    """Normalise, identify and chunk one record into documents rows."""
    if record.get("error"):
        err_id = doc_id_for("error:" + record["source"])
        return [{"doc_id": err_id, "source": record["source"], "error": record["error"]}]
    text = normalise_text(record["text"])
    base = {"title": record["title"], "source": record["source"], "metadata_json": json.dumps(record["metadata"], default=str)}
    parent_id = doc_id_for(text)
    if len(text) < min_chars:
        return [{**base, "doc_id": parent_id, "text": text, "error": f"too short: {len(text)} characters < ingest.min_document_chars ({min_chars})"}]
    chunks = split_document(text, max_tokens, count_tokens)
    rows = []
    for i, chunk in enumerate(chunks):
        title = base["title"] if len(chunks) == 1 else f"{base['title']} (part {i + 1} of {len(chunks)})"
        rows.append({
            **base,
            "title": title,
            "doc_id": parent_id if len(chunks) == 1 else doc_id_for(chunk),
            "text": chunk,
            "parent_doc_id": parent_id,
            "chunk_index": i,
            "num_chunks": len(chunks),
            "num_tokens": count_tokens(chunk),
        })
    return rows


class IngestStage:
    """Ray Data callable: a batch of input files -> one committed documents shard per call."""

    def __init__(self, config_json: str):
        from transformers import AutoTokenizer

        from ray_entigraph.engines.bundled import resolve_model_path

        self.config = EntiGraphConfig.model_validate_json(config_json)
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(self.config.model.name, self.config.model.cache_dir))
        self.store = storage.StageStore(self.config.output_dir, schema.INGEST)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, batch):
        started = time.time()
        rows = []
        urls = batch.column("path").to_pylist()
        for url, fmt in zip(urls, batch.column("format").to_pylist()):
            for record in records_from_file(url, fmt, self.config.input):
                rows.extend(documents_from_record(
                    record,
                    max_tokens=self.config.ingest.max_document_tokens,
                    min_chars=self.config.ingest.min_document_chars,
                    count_tokens=self.count_tokens,
                ))
        seen: set[str] = set()
        unique = [r for r in rows if not (r["doc_id"] in seen or seen.add(r["doc_id"]))]
        ok = [r for r in unique if not r.get("error")]
        errors = [{"stage": schema.INGEST, "request_key": r["doc_id"], "doc_id": r["doc_id"], "error": f"{r['source']}: {r['error']}"} for r in unique if r.get("error")]
        return commit_unit(
            self.store, ok, errors, key_column="doc_id", started=started,
            usage={"num_prompt_tokens": 0, "num_cached_tokens": 0, "num_generated_tokens": 0},
            identity={**shard_identity(self.config, None), "source": urls[0] if len(urls) == 1 else None},
            name_keys=urls,  # two files with the same content still get one shard each
        )
