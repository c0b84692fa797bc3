"""Training data: tokenize and pack each source into committed block shards (a Ray Data stage), and load
blocks back for the training workers.

Sources are the synthetic corpus, the source documents (the Raw CPT baseline) and replay corpora (any text
dataset: Parquet or JSONL, local or object storage). One input shard or file is one unit of work: its
texts are put in a fixed order (by request key or doc_id; replay files in file order), tokenized, packed
with an EOS between texts, and committed as one blocks shard whose name is a hash of (input, block length,
tokenizer), so packing is deterministic and a re-run skips what is packed.
"""

from __future__ import annotations

import time

import numpy as np

from ray_entigraph import schema, storage
from ray_entigraph.config import EntiGraphConfig, InputConfig


def base_model_name(config: EntiGraphConfig) -> str:
    return config.train.base_model or config.model.name


def train_url(config: EntiGraphConfig, *parts: str) -> str:
    """This training's folder (output_dir/<train.name>), or a path inside it."""
    return storage.join(config.output_dir, *config.train.name.split("/"), *parts)


def pack_units(config: EntiGraphConfig) -> list[dict]:
    """Every (source, input file) to pack for the configured training corpus and replay sources."""
    from ray_entigraph.pipeline import _document_index
    from ray_entigraph.stages.ingest import list_input_files

    units = []
    if config.train.corpus in ("synthetic", "synthetic+raw"):
        # the curated copy when curate is on (stages/curate.py), else the synthetic stage's own shards
        stage = schema.SYNTHESIZE
        if config.curate.enabled:
            from ray_entigraph.stages.curate import curated_stage

            stage = curated_stage(config)
        for url in storage.StageStore(config.output_dir, stage).shard_urls():
            units.append({"source": schema.SYNTHETIC_SOURCE, "url": url, "fmt": "parquet", "text_field": "text",
                          "sort_by": "task_id", "internal": True})
    if config.train.corpus in ("raw", "synthetic+raw"):
        # the source documents join the main stream ("synthetic" names the corpus being taught)
        for url in sorted(set(_document_index(config).values())):
            units.append({"source": schema.SYNTHETIC_SOURCE, "url": url, "fmt": "parquet", "text_field": "text",
                          "sort_by": "doc_id", "internal": True})
    for rep in config.train.replay:
        for url, fmt in list_input_files(InputConfig(path=rep.path, text_field=rep.text_field)):
            units.append({"source": schema.REPLAY_PREFIX + rep.name, "url": url, "fmt": fmt, "text_field": rep.text_field,
                          "sort_by": "", "internal": False})
    # a fixed order that does not depend on where output_dir lives: block i of a source is the same block
    # in a copy of the run (our own shards are named by content hash)
    return sorted(units, key=lambda u: (u["source"], _unit_id(u)))


def _unit_id(unit: dict) -> str:
    return storage.posixpath.basename(unit["url"]) if unit["internal"] else unit["url"]


def unit_keys(config: EntiGraphConfig, unit: dict) -> list[str]:
    return [unit["source"], _unit_id(unit), f"block_len={config.train.block_len}", base_model_name(config)]


def read_texts(unit: dict) -> list[str]:
    """The unit's texts in a fixed order."""
    if unit["fmt"] == "parquet":
        cols = [unit["text_field"]] + ([unit["sort_by"]] if unit["sort_by"] else [])
        rows = storage.read_parquet(unit["url"], cols).to_pylist()
        if unit["sort_by"]:
            rows.sort(key=lambda r: r[unit["sort_by"]])
        return [r[unit["text_field"]] for r in rows if r[unit["text_field"]]]
    from ray_entigraph.stages.ingest import records_from_file

    records = records_from_file(unit["url"], unit["fmt"], InputConfig(path=unit["url"], text_field=unit["text_field"]))
    bad = [r["error"] for r in records if r.get("error")]
    if bad and len(bad) == len(records):
        raise ValueError(f"replay input {unit['url']} has no usable text: {bad[0]}")
    return [r["text"] for r in records if not r.get("error")]


class PackStage:
    """Ray Data callable: input units -> committed block shards, one per unit."""

    def __init__(self, config_json: str):
        from transformers import AutoTokenizer

        from ray_entigraph.engines.bundled import resolve_model_path

        self.config = EntiGraphConfig.model_validate_json(config_json)
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(base_model_name(self.config), self.config.model.cache_dir))

    def __call__(self, batch):
        import pyarrow as pa

        from ray_entigraph.stages.common import ray_node_id
        from ray_entigraph.train.pack import pack_token_lists

        entries = []
        for unit in batch.to_pylist():
            started = time.time()
            texts = read_texts(unit)
            ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
            blocks, leftover = pack_token_lists(ids, self.config.train.block_len, self.tokenizer.eos_token_id)
            store = storage.StageStore(self.config.output_dir, schema.blocks_stage(unit["source"]))
            table = pa.table({"input_ids": pa.array(blocks, type=pa.list_(pa.int32()))}, schema=schema.BLOCKS)
            entry = store.commit(table, None, keys=unit_keys(self.config, unit), stats={
                "source": unit["source"], "source_file": unit["url"], "num_texts": len(texts),
                "num_tokens": sum(len(x) + 1 for x in ids), "leftover_tokens": leftover,
                "wall_s": round(time.time() - started, 3), "node_id": ray_node_id(),
            })
            entries.append({"source": unit["source"], "rows": entry["rows"], "num_tokens": entry["num_tokens"]})
        return pa.Table.from_pylist(entries)


def run_pack(config: EntiGraphConfig) -> dict[str, int]:
    """Pack every source not packed yet (Ray Data over input units); return blocks per source."""
    import ray.data

    units = pack_units(config)
    if not any(u["source"] == schema.SYNTHETIC_SOURCE for u in units):
        raise ValueError(
            f"No training text: {config.output_dir!r} has no committed "
            f"{'synthetic rows' if config.train.corpus != 'raw' else 'documents'}. Fix: run `ray-entigraph synthesize` "
            "with the same config first (or point output_dir at a run that has them)."
        )
    todo = []
    for unit in units:
        store = storage.StageStore(config.output_dir, schema.blocks_stage(unit["source"]))
        marker = storage.join(store.committed_url, storage.shard_name(unit_keys(config, unit)) + ".json")
        if not storage.exists(marker):
            todo.append(unit)
    if todo:
        ds = ray.data.from_items(todo).map_batches(
            PackStage, fn_constructor_args=(config.model_dump_json(),), batch_size=1, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(config.resources.max_actors, 1)), num_cpus=1,
        )
        for _ in ds.iter_rows():
            pass
    counts: dict[str, int] = {}
    for source in {u["source"] for u in units}:
        wanted = {storage.shard_name(unit_keys(config, u)) for u in units if u["source"] == source}
        entries = storage.StageStore(config.output_dir, schema.blocks_stage(source)).manifest_entries()
        counts[source] = sum(e["rows"] for e in entries if e["shard"] in wanted)
    return counts


def load_blocks(config: EntiGraphConfig, source: str) -> np.ndarray:
    """All blocks of a source for the current config, in a fixed order, as an [n, block_len] int32 array."""
    store = storage.StageStore(config.output_dir, schema.blocks_stage(source))
    entries = {e["shard"]: e for e in store.manifest_entries()}
    arrays = []
    for unit in pack_units(config):
        entry = entries.get(storage.shard_name(unit_keys(config, unit)))
        if unit["source"] == source and entry and entry["rows"]:
            col = storage.read_parquet(storage.join(store.url, entry["file"]), ["input_ids"]).column("input_ids")
            arrays.append(np.asarray(col.combine_chunks().values, dtype=np.int32).reshape(-1, config.train.block_len))
    if not arrays:
        return np.zeros((0, config.train.block_len), dtype=np.int32)
    return np.concatenate(arrays)
