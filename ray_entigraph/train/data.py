"""Training data: tokenize and pack each source into committed block shards (a Ray Data stage), and load
blocks back for the training workers.

Sources are the synthetic corpus, the source documents (the Raw CPT baseline) and replay corpora (any text
dataset: Parquet or JSONL, local or object storage). One partition or file is one unit of work: its
texts are put in a fixed order (by task_id or doc_id, or one megadoc per source document with
`train.packing: megadocs`; replay files in file order), tokenized, packed (train/pack.py) and committed as
one blocks shard whose name is a hash of (input, block length, tokenizer, packing), so packing is
deterministic and a re-run skips what is packed. Each unit's tail (the tokens short of a last block) is
written beside its shard; a second pass packs every source's tails, in unit order, into one more shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np

from ray_entigraph import schema, storage
from ray_entigraph.config import EntiGraphConfig, InputConfig
from ray_entigraph.context import RunContext
from ray_entigraph.corpus import Corpus, read_documents, read_synthetic
from ray_entigraph.engines.hf import load_tokenizer
from ray_entigraph.errors import ConfigError, InputError, StageFailed
from ray_entigraph.inputs import list_input_files, records_from_file
from ray_entigraph.layout import Layout, base_model_name, shard_basename
from ray_entigraph.partitions import partition_of
from ray_entigraph.stages.base import ray_node_id, run_unit, start_attempt_counter
from ray_entigraph.text.stitch import ROUTED_COLUMNS, chunk_info, is_stitched, route, stitch
from ray_entigraph.train.pack import megadocs, pack_tails, pack_token_lists, tokenizer_bos

PACK_FORMAT = "pack=2"  # BOS where the tokenizer starts texts with one, tails kept (format 1 dropped them)


def pack_units(ctx: RunContext) -> list[dict]:
    """Every unit to pack for the configured training corpus and replay sources: a partition of the current
    synthetic rows or documents (read through corpus.py, so only the current identity's rows), a curated
    shard, or a replay file."""
    config = ctx.config
    if config.train.streams:
        units = stream_units(ctx)
    else:
        units = _rows_units(ctx, schema.SYNTHETIC_SOURCE) if config.train.corpus != "raw" else []
        if config.train.corpus in ("raw", "synthetic+raw"):
            # the source documents join the main stream ("synthetic" names the corpus being taught)
            units += _partition_units(ctx, "documents", ctx.layout.documents, ctx.documents_identity)
    for rep in config.train.replay:
        for url, fmt in list_input_files(InputConfig(path=rep.path, text_field=rep.text_field)):
            units.append({"source": schema.REPLAY_PREFIX + rep.name, "url": url, "fmt": fmt,
                          "text_field": rep.text_field, "sort_by": "", "internal": False})
    units += stitch_units(ctx, units)
    # a fixed order that does not depend on where output_dir lives: block i of a source is the same block
    # in a copy of the run (our own shards are named by content hash)
    units.sort(key=lambda u: (u["source"], _unit_id(u)))
    return units + tail_units(config, units)


def stitching(config: EntiGraphConfig) -> bool:
    return config.synthesis.augmenter == "rewrite" and config.train.stitch_chunks


def _rows_unit(unit: dict) -> bool:
    """A unit of synthetic rows (a partition, or a curated shard), not documents, megadocs or replay."""
    return unit["fmt"] == "synthetic" or (unit["fmt"] == "parquet" and unit["internal"]
                                          and unit["source"] != "documents")


def stitch_units(ctx: RunContext, units: list[dict]) -> list[dict]:
    """With the rewrite augmenter (text/stitch.py): every unit of synthetic rows leaves its chunks' rewrites
    out (`stitch`), and each source gets one `stitched` unit per partition, the texts joined back per
    document of that partition. The stitch id names every rows unit they come from."""
    if not stitching(ctx.config):
        return []
    rows_units = [u for u in units if _rows_unit(u)]
    if not rows_units:
        return []
    stitch_id = hashlib.sha256(json.dumps(sorted({_unit_id(u) for u in rows_units})).encode()).hexdigest()[:16]
    out = []
    for unit in rows_units:
        unit["stitch"] = stitch_id
    for source, select in sorted({(u["source"], u.get("select", "")) for u in rows_units}):
        for q in range(ctx.config.num_partitions):
            out.append({"source": source, "url": f"stitched/p={q:05d}/{stitch_id}", "fmt": "stitched",
                        "partition": q, "select": select, "stitch": stitch_id, "text_field": "text",
                        "sort_by": "", "internal": True})
    return out


def route_units(units: list[dict]) -> list[dict]:
    """One routing unit per partition of synthetic rows (or curated shard), whichever streams read it: its
    chunks' rewrites written where their document's stitched unit reads them (the first wave of packing)."""
    seen: dict[str, dict] = {}
    for unit in units:
        if unit.get("stitch") and unit["fmt"] != "stitched":
            key = f"p={unit['partition']:05d}" if unit["fmt"] == "synthetic" else _unit_id(unit)
            seen.setdefault(key, unit)
    return [{"of": u, "name": hashlib.sha256(k.encode()).hexdigest()[:16], "stitch": u["stitch"]}
            for k, u in sorted(seen.items())]


def stream_units(ctx: RunContext) -> list[dict]:
    """The units of each stream of `train.streams` (train/mix.py), each stream its own block source: the
    documents' partitions, the synthetic rows (all, or of one kind: `select`), or megadocs (a partition's
    documents each followed by its synthetic texts; documents and their rows share a partition)."""
    config = ctx.config
    units = []
    for stream in sorted(config.train.streams):
        select = stream_kind(stream)
        if stream == "documents":
            units += _partition_units(ctx, "documents", ctx.layout.documents, ctx.documents_identity, stream)
        elif stream == "megadocs":
            if config.curate.enabled:
                raise ConfigError("train.streams names megadocs, which joins documents with the uncurated synthetic "
                                  "rows, but curate.enabled is true. Fix: train the curated rows as the synthetic "
                                  "or format streams, or set curate.enabled=false.")
            units += _partition_units(ctx, "megadocs", ctx.synthetic_store, ctx.synthetic_identity, stream,
                                      extra=(ctx.documents_identity,))
        else:
            units += _rows_units(ctx, stream, select)
    return units


def _rows_units(ctx: RunContext, source: str, select: str = "") -> list[dict]:
    """The units of synthetic rows (of one kind: `select`): each curated shard when curating, else each sealed
    partition of the current rows."""
    if not ctx.config.curate.enabled:
        return _partition_units(ctx, "synthetic", ctx.synthetic_store, ctx.synthetic_identity, source, select=select)
    store = ctx.layout.store(ctx.curated_stage())  # the curated copy (stages/curate.py)
    # named by content too: a shard curated again is packed again
    return [{"source": source, "url": storage.join(store.url, entry["file"]), "fmt": "parquet", "text_field": "text",
             "sort_by": "task_id", "internal": True, "select": select, "version": str(entry.get("sha256", ""))[:16]}
            for entry in store.manifest_entries() if entry.get("rows", 0) > 0]


def stream_kind(stream: str) -> str:
    """The `kind` a stream's synthetic rows have ("" for every kind): `format:faq` -> `rewrite:faq`."""
    if stream.startswith("format:"):
        return schema.KIND_REWRITE_PREFIX + stream.removeprefix("format:")
    return stream.removeprefix("kind:") if stream.startswith("kind:") else ""


def tail_units(config: EntiGraphConfig, units: list[dict]) -> list[dict]:
    """One unit per source that packs the tails of all its units, in their order (named by them)."""
    parts: dict[str, list[str]] = {}
    for unit in units:
        parts.setdefault(unit["source"], []).append(storage.shard_name(unit_keys(config, unit)))
    out = []
    for source, names in parts.items():
        content = hashlib.sha256(json.dumps(names).encode()).hexdigest()[:16]
        out.append({"source": source, "url": f"tails/{content}", "fmt": "tails", "parts": names,
                    "text_field": "", "sort_by": "", "internal": True})
    return out


def _partition_units(ctx: RunContext, kind: str, store, identity: str, source: str = schema.SYNTHETIC_SOURCE,
                     select: str = "", extra: tuple = ()) -> list[dict]:
    """One unit per non-empty sealed partition, named by what it holds (its sealed shards, the kind of rows it
    selects, and `extra`: a megadoc unit also holds the partition's documents): P manifest reads."""
    units = []
    for p in range(store.num_partitions):
        manifest = store.sealed(p)
        if manifest is None or manifest.get("identity") != identity:
            continue  # never sealed for this identity: nothing of it is current yet
        shards = sorted(e["shard"] for e in manifest["entries"] if e.get("rows", 0) > 0)
        if shards:
            named = [identity, shards] + ([select] if select else []) + list(extra)
            content = hashlib.sha256(json.dumps(named).encode()).hexdigest()[:16]
            units.append({"source": source, "url": f"{kind}/p={p:05d}/{content}", "fmt": kind, "select": select,
                          "partition": p, "text_field": "text", "sort_by": "", "internal": True})
    return units


def _unit_id(unit: dict) -> str:
    if unit["fmt"] in ("synthetic", "documents", "tails", "megadocs", "stitched"):
        return unit["url"].replace("/", "-")
    if unit["internal"]:
        return shard_basename(unit["url"]) + (f"@{unit['version']}" if unit.get("version") else "")
    return unit["url"]


def unit_keys(config: EntiGraphConfig, unit: dict) -> list[str]:
    keys = [unit["source"], _unit_id(unit), f"block_len={config.train.block_len}", base_model_name(config),
            PACK_FORMAT]
    if _megadoc_unit(config, unit):
        keys.append("packing=megadocs")
    if unit.get("stitch"):  # its chunks' rewrites are left out (rows units), or joined (stitched units)
        keys.append(f"stitch={unit['stitch']}")
    return keys


def _megadoc_unit(config: EntiGraphConfig, unit: dict) -> bool:
    """Megadoc packing applies to synthetic rows (a document's rows are in one partition, or one curated shard)."""
    return config.train.packing == "megadocs" and (unit["fmt"] in ("synthetic", "stitched") or (
        unit["fmt"] == "parquet" and unit["internal"] and unit["source"] != "documents"
        and not unit["source"].startswith(schema.REPLAY_PREFIX)))


def read_texts(unit: dict, corpus: Corpus | None = None, mega: bool = False) -> list[str]:
    """The unit's texts in a fixed order (by task_id or doc_id; replay files in file order). With `mega` (a
    synthetic unit in megadoc mode, `_megadoc_unit`), one text per source document (`train.pack.megadocs`)."""
    select = unit.get("select", "")
    if unit["fmt"] == "synthetic":
        rows = read_synthetic(corpus, unit["partition"], ["text", "doc_id", "kind"])
        rows = [r for r in rows if r["kind"] == select] if select else rows
        rows = _without_chunk_rewrites(unit, rows, corpus)
        return megadocs(rows) if mega else [r["text"] for r in rows if r["text"]]
    if unit["fmt"] == "stitched":
        stitched = stitch(read_routed(routed_url(corpus, unit["stitch"], unit["partition"])))
        stitched = [r for r in stitched if r["kind"] == select] if select else stitched
        if mega:  # a document's stitched texts (its formats and repeats) as one megadoc
            return megadocs([{"doc_id": r["parent_doc_id"], "task_id": f"{r['kind']}#{i:06d}", "text": r["text"]}
                             for i, r in enumerate(stitched)])
        return [r["text"] for r in stitched]
    if unit["fmt"] == "documents":
        return [r["text"] for r in read_documents(corpus, unit["partition"], ["text"]) if r["text"]]
    if unit["fmt"] == "megadocs":  # each document, then its synthetic texts (train.pack.megadocs)
        docs = read_documents(corpus, unit["partition"], ["text"])
        return megadocs(read_synthetic(corpus, unit["partition"], ["text", "doc_id"]), leading=docs)
    if unit["fmt"] == "parquet":
        cols = [unit["text_field"]] + ([unit["sort_by"]] if unit["sort_by"] else []) + (["doc_id"] if mega else [])
        extra = (["kind"] if select or unit.get("stitch") else []) + (["doc_id"] if unit.get("stitch") else [])
        rows = storage.read_parquet(unit["url"], sorted(set(cols + extra))).to_pylist()
        rows = [r for r in rows if r["kind"] == select] if select else rows
        rows = _without_chunk_rewrites(unit, rows, corpus)
        if unit["sort_by"]:
            rows.sort(key=lambda r: r[unit["sort_by"]])
        if mega:
            return megadocs(rows)
        return [r[unit["text_field"]] for r in rows if r[unit["text_field"]]]
    records = records_from_file(unit["url"], unit["fmt"], InputConfig(path=unit["url"], text_field=unit["text_field"]))
    bad = [r["error"] for r in records if r.get("error")]
    if bad and len(bad) == len(records):
        raise InputError(f"replay input {unit['url']} has no usable text: {bad[0]}")
    return [r["text"] for r in records if not r.get("error")]


def _chunks_of(corpus: Corpus, p: int) -> dict:
    return chunk_info(read_documents(corpus, p, ["parent_doc_id", "chunk_index", "num_chunks"]))


def _without_chunk_rewrites(unit: dict, rows: list[dict], corpus: Corpus | None) -> list[dict]:
    """A rows unit under stitching: its rows less the rewrites of chunks (their document's stitched unit
    trains them). A curated shard's rows are all of one partition (the synthetic shard it curated)."""
    if not unit.get("stitch") or not rows:
        return rows
    p = unit["partition"] if "partition" in unit else partition_of(rows[0]["doc_id"], corpus.num_partitions)
    chunks = _chunks_of(corpus, p)
    return [r for r in rows if not is_stitched(r, chunks)] if chunks else rows


def routed_url(corpus: Corpus, stitch_id: str, q: int) -> str:
    """The folder of the chunk rewrites routed to partition q (one file per rows unit that had any)."""
    return storage.join(corpus.config.output_dir, "train", "stitch", stitch_id, f"q={q:05d}")


def read_routed(folder: str) -> list[dict]:
    urls = storage.list_files(folder, ".parquet")
    return [r for t in storage.read_parquet_many(urls, list(ROUTED_COLUMNS)) for r in t.to_pylist()] if urls else []


def route_chunk_rewrites(batch, *, corpus: Corpus):
    """Packing's first wave (a CPU task per rows unit): the unit's rewrites of chunks, written into the
    folder of each one's document's partition, then a marker; a unit routed before is skipped."""
    import pyarrow as pa

    done = []
    for job in batch.to_pylist():
        unit, name = job["of"], job["name"]
        marker = storage.join(corpus.config.output_dir, "train", "stitch", job["stitch"], "_routed", name + ".json")
        if not storage.exists(marker):
            if unit["fmt"] == "synthetic":
                p = unit["partition"]
                rows = read_synthetic(corpus, p, ["text", "doc_id", "kind"])
            else:
                rows = storage.read_parquet(unit["url"], ["task_id", "doc_id", "kind", "text"]).to_pylist()
                p = partition_of(rows[0]["doc_id"], corpus.num_partitions) if rows else 0
            routed = route(rows, _chunks_of(corpus, p)) if rows else []
            by_q: dict[int, list[dict]] = {}
            for r in routed:
                by_q.setdefault(partition_of(r["parent_doc_id"], corpus.num_partitions), []).append(r)
            for q, part in sorted(by_q.items()):
                table = pa.Table.from_pylist([{c: r[c] for c in ROUTED_COLUMNS} for r in part])
                url = storage.join(routed_url(corpus, job["stitch"], q), name + ".parquet")
                storage.write_bytes(url, storage.table_to_parquet_bytes(table))
            storage.write_text(marker, json.dumps({"routed": len(routed), "partitions": sorted(by_q)}))
        done.append({"name": name})
    return pa.Table.from_pylist(done)


class PackWorker:
    """Ray Data callable: input units -> committed block shards, one per unit."""

    def __init__(self, config: EntiGraphConfig, layout: Layout | None = None, corpus: Corpus | None = None):
        self.config = config
        self.layout = layout or Layout(config.output_dir)
        self.corpus = corpus
        self.tokenizer = load_tokenizer(base_model_name(self.config), self.config.model.cache_dir)
        self.bos_id = tokenizer_bos(self.tokenizer)

    def __call__(self, batch):
        import pyarrow as pa

        entries = []
        for unit in batch.to_pylist():
            store, keys = self.layout.blocks(unit["source"]), unit_keys(self.config, unit)
            entries.append(run_unit(store.url, keys, self.config.resources.max_unit_attempts,
                                    lambda unit=unit, store=store, keys=keys: self._pack(unit, store, keys),
                                    lambda reason, unit=unit: self._give_up(unit, reason)))
        return pa.Table.from_pylist(entries)

    @staticmethod
    def _give_up(unit: dict, reason: str):
        """Training needs every block: a unit that cannot be packed stops the run, naming it."""
        raise StageFailed(f"Packing {unit['url']} ({unit['source']}) failed: {reason}. Fix the cause (often memory: "
                          "more memory per pack actor, or smaller input files) and re-run.")

    def _pack(self, unit: dict, store: storage.StageStore, keys: list[str]) -> dict:
        import pyarrow as pa

        started = time.time()
        parquet_url = storage.join(store.url, storage.shard_name(keys) + ".parquet")
        if unit["fmt"] == "tails":
            parts = [tail_url(storage.join(store.url, name + ".parquet")) for name in unit["parts"]]
            blocks, repeated = pack_tails([np.frombuffer(storage.read_bytes(u), dtype="<i4") for u in parts],
                                          self.config.train.block_len)
            stats = {"num_texts": 0, "num_tokens": int(blocks.size) - repeated, "repeated_tokens": repeated}
        else:
            texts = read_texts(unit, self.corpus, _megadoc_unit(self.config, unit))
            # texts are text: an "<|endoftext|>" written in one is not an end-of-text token (the packer adds it)
            ids = (self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
                   if texts else [])
            blocks, tail = pack_token_lists(ids, self.config.train.block_len, self.tokenizer.eos_token_id,
                                            self.bos_id)
            # the tail, written before the marker: the source's tails shard packs it (no token lost)
            storage.write_bytes(tail_url(parquet_url), tail.astype("<i4").tobytes())
            stats = {"num_texts": len(texts), "num_tokens": int(blocks.size + tail.size),
                     "tail_tokens": int(tail.size)}
        offsets = pa.array(np.arange(0, blocks.size + 1, self.config.train.block_len, dtype=np.int32))
        table = pa.table({"input_ids": pa.ListArray.from_arrays(offsets, pa.array(blocks.reshape(-1)))},
                         schema=schema.BLOCKS)
        # the same blocks as one flat little-endian int32 array, written before the marker: a training rank
        # reads only its own blocks from it (a byte range, or a memory map on a local disk)
        storage.write_bytes(raw_url(parquet_url), blocks.astype("<i4").tobytes())
        entry = store.commit(table, None, keys=keys, stats={
            "source": unit["source"], "source_file": unit["url"], **stats,
            "wall_s": round(time.time() - started, 3), "node_id": ray_node_id(),
        })
        return {"source": unit["source"], "rows": entry["rows"], "num_tokens": entry["num_tokens"]}


def run_pack(config: EntiGraphConfig, ctx: RunContext | None = None) -> dict[str, int]:
    """Pack every source not packed yet (Ray Data over input units); return blocks per source."""
    import ray.data  # lazy: Ray loads only when packing runs

    ctx = ctx or RunContext.resolve(config)
    units = pack_units(ctx)
    if config.train.streams:
        empty = sorted(set(config.train.streams) - {u["source"] for u in units})
        if empty:
            raise InputError(f"No training text for the stream {empty[0]!r} of train.streams in {config.output_dir!r}: "
                             "nothing committed for this config. Fix: run `ray-entigraph synthesize` with the same "
                             "config first.")
    elif not any(u["source"] == schema.SYNTHETIC_SOURCE for u in units):
        what = "synthetic rows" if config.train.corpus != "raw" else "documents"
        others = [storage.filesystem(u)[1].rstrip("/").rsplit("/", 1)[-1]
                  for u in storage.list_files(ctx.layout.url(schema.SYNTHESIZE))]
        mine = ctx.synthesis_id
        hint = (f" It holds synthetic rows of other synthesis settings (synthetic/{', synthetic/'.join(others)}); this "
                f"config's model, prompt version, sampling and seed name synthetic/{mine}."
                if what == "synthetic rows" and others and mine not in others else "")
        raise InputError(
            f"No training text: {config.output_dir!r} has no committed {what} for this config.{hint} Fix: run "
            "`ray-entigraph synthesize` with the same config first (or train with the settings the rows were "
            "made with)."
        )
    todo = []
    for unit in units:
        store = ctx.layout.blocks(unit["source"])
        marker = storage.join(store.committed_url, storage.shard_name(unit_keys(config, unit)) + ".json")
        if not storage.exists(marker):
            todo.append(unit)
    start_attempt_counter()
    routes = route_units(units) if any(u["fmt"] == "stitched" for u in todo) else []
    if routes:  # the chunks' rewrites to their documents' partitions, before the stitched units read them
        for _ in ray.data.from_items(routes).map_batches(
                route_chunk_rewrites, fn_kwargs={"corpus": ctx.corpus()}, batch_size=1, batch_format="pyarrow",
                num_cpus=config.resources.pack.num_cpus_per_worker).iter_rows():
            pass
    # two passes: the units, then each source's tails shard (it reads the tails the first pass wrote)
    for wave in ([u for u in todo if u["fmt"] != "tails"], [u for u in todo if u["fmt"] == "tails"]):
        if not wave:
            continue
        ds = ray.data.from_items(wave).map_batches(
            PackWorker, fn_constructor_args=(config, ctx.layout, ctx.corpus()), batch_size=1, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=config.resources.pack.max_workers),
            num_cpus=config.resources.pack.num_cpus_per_worker, num_gpus=0,
        )
        for _ in ds.iter_rows():
            pass
    return {source: sum(rows for _, rows in files) for source, files in block_files(ctx, units).items()}


def block_files(ctx: RunContext, units: list[dict] | None = None) -> dict[str, list[tuple[str, int]]]:
    """source -> its committed block shards for the current config, in a fixed order, as (url, rows)."""
    units = units if units is not None else pack_units(ctx)
    out: dict[str, list[tuple[str, int]]] = {}
    entries: dict[str, dict[str, dict]] = {}
    for unit in units:
        source = unit["source"]
        if source not in entries:
            entries[source] = {e["shard"]: e for e in ctx.layout.blocks(source).manifest_entries()}
            out[source] = []
        entry = entries[source].get(storage.shard_name(unit_keys(ctx.config, unit)))
        if entry and entry["rows"]:
            out[source].append((storage.join(ctx.layout.blocks(source).url, entry["file"]), int(entry["rows"])))
    return out


def load_blocks(files: list[tuple[str, int]], block_len: int) -> np.ndarray:
    """The blocks of the given shards (`block_files`), in order, as an [n, block_len] int32 array (every block
    in memory: for small corpora and tools; training reads per rank with `BlockReader`)."""
    arrays = []
    for url, _ in files:
        col = storage.read_parquet(url, ["input_ids"]).column("input_ids")
        arrays.append(np.asarray(col.combine_chunks().values, dtype=np.int32).reshape(-1, block_len))
    if not arrays:
        return np.zeros((0, block_len), dtype=np.int32)
    return np.concatenate(arrays)


def raw_url(parquet_url: str) -> str:
    """Where a blocks shard's flat int32 copy lives (beside it, `.i32`)."""
    return parquet_url.removesuffix(".parquet") + ".i32"


def tail_url(parquet_url: str) -> str:
    """Where a unit's tail (its tokens short of a last block) lives (beside its shard, `.tail.i32`)."""
    return parquet_url.removesuffix(".parquet") + ".tail.i32"


class BlockReader:
    """One source's blocks, read on demand by index: a rank reads only the blocks it trains on. Local shards
    are memory-mapped (file pages, not the process's own memory); on object storage each block is one ranged
    GET of block_len x 4 bytes, fetched by a few threads a step ahead (`prefetch`). Shards packed before the
    flat copy existed are read whole from their Parquet file, once. `bytes_read` counts what was fetched."""

    def __init__(self, files: list[tuple[str, int]], block_len: int, threads: int = 8):
        import threading

        self.files, self.block_len = files, block_len
        self.starts = np.cumsum([0] + [rows for _, rows in files])
        self.bytes_read = 0
        self._lock = threading.Lock()
        self._arrays: dict[int, np.ndarray] = {}  # shard -> memory map, or the whole shard (old format)
        self._ranged: set[int] = set()  # shards read by byte range
        self._pending: dict = {}  # index -> Future of its block
        self._threads = threads
        self._pool = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_read += n

    def _open(self, shard: int) -> None:
        """Decide once per shard how to read it."""
        with self._lock:
            if shard in self._arrays or shard in self._ranged:
                return
        url = self.files[shard][0]
        raw = url if url.endswith(".i32") else raw_url(url)
        local = raw.removeprefix("file://")
        if storage.is_local(raw) and os.path.exists(local):
            array = np.memmap(local, dtype="<i4", mode="r").reshape(-1, self.block_len)
        elif not storage.is_local(raw) and storage.exists(raw):
            with self._lock:
                self._ranged.add(shard)
            return
        else:  # packed before the flat copy existed
            array = load_blocks([self.files[shard]], self.block_len)
            self._count(array.nbytes)
        with self._lock:
            self._arrays.setdefault(shard, array)

    def _fetch(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} of {len(self)}")
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        row = index - int(self.starts[shard])
        self._open(shard)
        if shard in self._ranged:
            url = self.files[shard][0]
            fs, path = storage.filesystem(url if url.endswith(".i32") else raw_url(url))
            size = self.block_len * 4
            data = fs.cat_file(path, start=row * size, end=(row + 1) * size)
            self._count(len(data))
            return np.frombuffer(data, dtype="<i4").copy()
        array = self._arrays[shard]
        block = np.array(array[row])
        if isinstance(array, np.memmap):
            self._count(block.nbytes)
        return block

    def prefetch(self, indices) -> None:
        """Start fetching these blocks (the next step's) in the background; `get` picks them up."""
        from concurrent.futures import ThreadPoolExecutor

        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads)
        for i in indices:
            if i not in self._pending:
                self._pending[i] = self._pool.submit(self._fetch, i)

    def get(self, index: int) -> np.ndarray:
        pending = self._pending.pop(index, None)
        return pending.result() if pending is not None else self._fetch(index)
