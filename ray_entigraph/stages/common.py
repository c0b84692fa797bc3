"""Pieces shared by the stage adapters: actor-pool arguments and committing a unit of work."""

from __future__ import annotations

import os
import time
from typing import Any

import pyarrow as pa

from ray_entigraph import schema
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.storage import StageStore


# Per-request accounting that every engine reports and every model stage sums into its commit marker.
USAGE_FIELDS = ("num_prompt_tokens", "num_cached_tokens", "num_generated_tokens", "num_retries")


def model_actor_kwargs(config: EntiGraphConfig) -> dict[str, Any]:
    """`map_batches` keyword arguments for a model stage: an actor pool with explicit bounds and resources."""
    from ray.data import ActorPoolStrategy

    res = config.resources
    kwargs: dict[str, Any] = {
        "compute": ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors),
        "num_cpus": res.num_cpus_per_actor,
        "batch_size": res.batch_size,
        "batch_format": "pyarrow",
        # One call = one committed shard; the driver sees results as they commit.
        "zero_copy_batch": True,
    }
    if res.num_gpus_per_actor:
        kwargs["num_gpus"] = res.num_gpus_per_actor
    if res.accelerator_type:
        kwargs["accelerator_type"] = res.accelerator_type
    return kwargs


def shard_identity(config: EntiGraphConfig, prompt_version: str | None) -> dict[str, str]:
    """What produced a shard, recorded in its manifest entry."""
    return {"config_hash": config.config_hash(), "model": config.model.name, "prompt_version": prompt_version or ""}


def ray_node_id() -> str:
    """The Ray node running this unit of work ("" outside Ray): tells the nodes of a cluster apart where
    `host` may not (several nodes on one machine, or containers with the same hostname)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def torch_threads_for(config: EntiGraphConfig) -> int:
    """Ray sets OMP_NUM_THREADS to an actor's num_cpus; on CPU we want every core the node gives us."""
    return config.engine.torch_threads or os.cpu_count() or 1


def commit_unit(
    store: StageStore,
    rows: list[dict],
    errors: list[dict],
    *,
    key_column: str,
    started: float,
    usage: dict[str, int],
    identity: dict[str, str] | None = None,
    name_keys: list[str] | None = None,
) -> pa.Table:
    """Commit one unit of work (ok rows + error rows) and return its manifest row for the driver."""
    table = schema.rows_to_table(rows, schema.SCHEMAS[store.stage])
    err_table = schema.rows_to_table(errors, schema.ERRORS) if errors else None
    keys = (name_keys or []) + [r[key_column] for r in rows] + [e["request_key"] for e in errors]
    entry = store.commit(
        table,
        err_table,
        keys=keys,
        stats={
            "num_ok": len(rows),
            "num_failed": len(errors),
            "wall_s": round(time.time() - started, 3),
            "host": os.uname().nodename,
            "node_id": ray_node_id(),
            "pid": os.getpid(),
            **(identity or {}),
            **usage,
        },
    )
    return manifest_row_table([entry])


def manifest_row_table(entries: list[dict]) -> pa.Table:
    return pa.table(
        {
            "shard": [e["shard"] for e in entries],
            "num_ok": [int(e.get("num_ok", 0)) for e in entries],
            "num_failed": [int(e.get("num_failed", 0)) for e in entries],
            "num_dropped": [int(e.get("num_dropped", 0)) for e in entries],
            "num_prompt_tokens": [int(e.get("num_prompt_tokens", 0)) for e in entries],
            "num_cached_tokens": [int(e.get("num_cached_tokens", 0)) for e in entries],
            "num_generated_tokens": [int(e.get("num_generated_tokens", 0)) for e in entries],
            "num_retries": [int(e.get("num_retries", 0)) for e in entries],
            "wall_s": [float(e.get("wall_s", 0.0)) for e in entries],
            "host": [str(e.get("host", "")) for e in entries],
            "node_id": [str(e.get("node_id", "")) for e in entries],
        }
    )
