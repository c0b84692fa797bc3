"""The stage protocol and what every stage shares: one commit path, usage accounting, actor-pool arguments,
and the driver loop that runs a stage and streams its commit rows into progress and the ledger.

A stage is one module holding both halves:
- the driver half, a `Stage` subclass: `enabled(ctx)`, `folder(ctx)` (where it commits) and `plan(ctx)`,
  which reads what is committed and returns a `StagePlan` (how many units the config asks for, how many are
  done, and the dataset of what is left);
- the worker half, a callable class (or function) that Ray builds inside an actor or task, named by the
  stage's `worker` and fed by `map_batches` with the stage's own `map_batches_kwargs(ctx)`.
`run_stage` does the rest for every stage alike: progress with an ETA, totals, the error check.

Every unit of work commits through `commit_unit`, which records rows, errors, usage, timing, host, Ray node
and the stage's own statistics in the shard's commit marker, and returns the one-row table the driver reads.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa

from ray_entigraph import ledger, schema, storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.errors import StageFailed
from ray_entigraph.partitions import PartitionedStore, partition_of

if TYPE_CHECKING:
    from ray_entigraph.context import RunContext

T = TypeVar("T")
PARTITION_TASK_CPUS = 0.25  # planning and sealing tasks wait on storage more than they compute
COMMIT_THREADS = 16  # concurrent partition commits of one unit of work (object-store requests are latency-bound)

# Per-request accounting that every engine reports and every model stage sums into its commit marker.
USAGE_FIELDS = ("num_prompt_tokens", "num_cached_tokens", "num_generated_tokens", "num_retries")


@dataclass
class Usage:
    """Summed engine usage of one unit of work."""

    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_generated_tokens: int = 0
    num_retries: int = 0

    def add(self, result: Any) -> None:
        for name in USAGE_FIELDS:
            setattr(self, name, getattr(self, name) + int(getattr(result, name, 0) or 0))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in USAGE_FIELDS}


# -- worker side -----------------------------------------------------------------------------------------


def shard_identity(config: EntiGraphConfig, prompt_version: str | None) -> dict[str, str]:
    """What produced a shard, recorded in its commit marker."""
    return {"config_hash": config.config_hash(), "model": config.model.name, "prompt_version": prompt_version or ""}


def ray_node_id() -> str:
    """The Ray node running this unit of work ("" outside Ray): tells the nodes of a cluster apart where
    `host` may not (several nodes on one machine, or containers with the same hostname)."""
    import ray  # lazy: workers have Ray; unit tests of pure pieces need not start it

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def assigned_resources() -> dict[str, float]:
    """The Ray resources held by the worker running this unit ({} outside Ray): a marker that says GPU shows
    the unit ran on a model actor, one without it that it did not."""
    import ray  # lazy: workers have Ray; unit tests of pure pieces need not start it

    if not ray.is_initialized():
        return {}
    try:
        held = ray.get_runtime_context().get_assigned_resources()
    except AssertionError:  # not a worker (a unit run in a driver, as in tests): nothing held
        return {}
    return {k: round(float(v), 4) for k, v in held.items() if not k.startswith("node:")}


def torch_threads_for(config: EntiGraphConfig) -> int:
    """Ray sets OMP_NUM_THREADS to an actor's num_cpus; on CPU we want every core the node gives us."""
    return config.engine.torch_threads or os.cpu_count() or 1


def worker_config(config: EntiGraphConfig) -> EntiGraphConfig:
    """The config an actor runs with (its own copy, torch threads resolved for its node)."""
    config = config.model_copy(deep=True)
    config.engine.torch_threads = torch_threads_for(config)
    return config


# -- bounded attempts of a unit of work ----------------------------------------------------------------------

ATTEMPTS_ACTOR = "ray-entigraph-unit-attempts"  # one per job, owned by the driver (it dies with the job)
KILL_UNIT_ENV = "RAY_ENTIGRAPH_FAULT_KILL_UNIT"  # fault tests: <stage>:<file>, a unit killed every time it runs
TASK_MAX_RETRIES = 3  # CPU tasks (planning, sealing, curation) whose worker dies this often on one input stop the stage


class UnitAttempts:
    """Attempts of the units of work in flight, counted across every actor of the job. A unit's count stays
    while its worker dies on it (Ray restarts the actor and retries the call), and is dropped when the unit
    ends, so the actor holds only the units in flight and the ones that killed their worker."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def begin(self, unit: str) -> int:
        self.counts[unit] = self.counts.get(unit, 0) + 1
        return self.counts[unit]

    def end(self, unit: str) -> None:
        self.counts.pop(unit, None)


_counter_handle: dict = {}  # job id -> the driver's handle (a named actor without handles is collected)


def start_attempt_counter() -> None:
    """Create the job's attempt counter from the driver (so that it does not die with a worker)."""
    import ray  # lazy: Ray loads only when a stage runs

    job = ray.get_runtime_context().get_job_id()
    if job in _counter_handle:  # the owner's handle keeps the counter alive: never drop it for another
        return
    _counter_handle.clear()  # a handle of an earlier Ray session in this process (ray.shutdown, ray.init)
    _counter_handle[job] = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(UnitAttempts).options(
        name=ATTEMPTS_ACTOR, get_if_exists=True).remote()


def _attempt_counter():
    import ray  # lazy: Ray loads only when a stage runs

    try:
        return ray.get_actor(ATTEMPTS_ACTOR) if ray.is_initialized() else None
    except ValueError:  # no counter (a worker run outside run_stage): nothing bounds a unit that kills its actor
        logging.getLogger(__name__).warning("no unit-attempt counter in this job: attempts are not bounded")
        return None


def _fault_kill_unit(store_url: str, unit: str) -> None:
    """Fault tests: with RAY_ENTIGRAPH_FAULT_KILL_UNIT=<stage>:<file>, the first unit of that stage to start
    names itself in <file>, and every process that runs that unit is SIGKILLed there (as the kernel's OOM
    killer would). Unset (always, outside tests), this is one dictionary lookup."""
    spec = os.environ.get(KILL_UNIT_ENV)
    if not spec:
        return
    stage, path = spec.split(":", 1)
    if f"/{stage}/" not in store_url + "/":
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.write(fd, unit.encode())
        os.close(fd)
    except FileExistsError:
        pass
    with open(path) as f:
        if f.read() == unit:
            os.kill(os.getpid(), 9)


def run_unit(where: str, keys: list[str], max_attempts: int, work: Callable[[], T],
             give_up: Callable[[str], T], seen: dict | None = None) -> T:
    """Run one unit of work (`work()` commits it; `where`: the folder it commits to, `keys`: what it holds),
    unless its worker already died on it `max_attempts` times: then `give_up(reason)` records it as failed
    (or raises), without running it. `seen["attempt"]` is set to this attempt's number (1 the first time)."""
    import ray  # lazy: Ray loads only when a stage runs

    unit = storage.shard_name([where, *keys])
    counter = _attempt_counter()
    attempt = ray.get(counter.begin.remote(unit)) if counter is not None else 1
    if seen is not None:
        seen["attempt"] = attempt
    try:
        if attempt > max_attempts:
            return give_up(f"its worker died {attempt - 1} times while running it (out of memory, a crash or a "
                           f"killed process): recorded as failed after resources.max_unit_attempts={max_attempts}; "
                           "the next run retries it")
        _fault_kill_unit(where, unit)
        return work()
    finally:  # reached when the unit ends or raises; a worker that dies never gets here, so its count stays
        if counter is not None:
            counter.end.remote(unit)


def bounded_task(fn: Callable, what: str) -> Callable:
    """`fn` (a CPU task of Ray Data: planning, sealing, curation) with the same bound on attempts as a model
    unit: a task whose worker dies TASK_MAX_RETRIES times on the same input stops the stage, naming `what`
    (Ray Data would retry it without end)."""
    import functools
    import pickle

    @functools.wraps(fn)
    def bounded(batch, **kwargs):
        def give_up(reason: str):
            raise StageFailed(f"{what} failed: {reason.split(': recorded')[0]}. Fix the cause (often memory per "
                              "task) and re-run.")

        return run_unit(what, [storage.shard_name([pickle.dumps(batch).hex()])], TASK_MAX_RETRIES,
                        lambda: fn(batch, **kwargs), give_up)

    return bounded


def commit_unit(
    store: storage.StageStore,
    rows: list[dict],
    errors: list[dict],
    *,
    row_schema: pa.Schema,
    key_column: str | None,
    started: float,
    usage: Usage | None = None,
    stats: dict[str, Any] | None = None,
    name_keys: list[str] | None = None,
    drops: list[dict] | None = None,
) -> pa.Table:
    """Commit one unit of work (ok rows + error rows) and return its manifest row for the driver.

    The shard name hashes `name_keys` plus the rows' and errors' keys (`key_column`; None: `name_keys`
    alone, for a shard derived one-to-one from another). `stats` adds the stage's own fields to the marker.
    `drops`: rows a filter removed on purpose, logged with their reasons in the errors table like failures
    but counted as `num_dropped`, not `num_failed`."""
    table = schema.rows_to_table(rows, row_schema)
    logged = errors + (drops or [])
    err_table = schema.rows_to_table(logged, schema.ERRORS) if logged else None
    keys = list(name_keys or [])
    if key_column is not None:
        keys += [r[key_column] for r in rows] + [e["request_key"] for e in errors]
    entry = store.commit(
        table,
        err_table,
        keys=keys,
        stats={
            "num_ok": len(rows),
            "num_failed": len(errors),
            **({"num_dropped": len(drops)} if drops is not None else {}),
            **(usage or Usage()).as_dict(),
            **(stats or {}),
            "wall_s": round(time.time() - started, 3),
            "host": os.uname().nodename,
            "node_id": ray_node_id(),
            "pid": os.getpid(),
            "resources": assigned_resources(),
        },
    )
    return manifest_row_table([entry])


def commit_partitioned(store: PartitionedStore, rows: list[dict], errors: list[dict], *, usage: Usage | None = None,
                       stats: dict[str, Any] | None = None, name_keys: list[str] | None = None,
                       partition_stats: Callable[[list[dict], list[dict]], dict] | None = None,
                       **kwargs: Any) -> pa.Table:
    """Commit one unit of work into the partitions its documents belong to (one shard per partition present;
    a unit planned from one partition makes one shard) and return one manifest row summing them. The unit's
    engine usage is recorded with its first shard; `partition_stats(rows, errors)` adds a partition's own
    figures to its marker."""
    parts: dict[int, tuple[list[dict], list[dict]]] = {}
    for r in rows:
        parts.setdefault(partition_of(r["doc_id"], store.num_partitions), ([], []))[0].append(r)
    for e in errors:
        p = partition_of(e["doc_id"], store.num_partitions) if e.get("doc_id") else 0
        parts.setdefault(p, ([], []))[1].append(e)
    def commit(i: int, p: int) -> dict:
        ok, failed = parts[p]
        own = partition_stats(ok, failed) if partition_stats is not None else {}
        table = commit_unit(store.part(p), ok, failed, usage=usage if i == 0 else None,
                            stats={**(stats or {}), **own, "partition": p},
                            name_keys=[*(name_keys or []), f"p={p}"] if name_keys is not None else None, **kwargs)
        return table.to_pylist()[0]

    order = sorted(parts)
    if len(order) <= 1:
        entries = [commit(i, p) for i, p in enumerate(order)]
    else:  # an ingest unit touches every partition: commit them concurrently (each is a few storage requests)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(COMMIT_THREADS, len(order))) as pool:
            entries = list(pool.map(commit, range(len(order)), order))
    return summed_manifest_row(entries)


def summed_manifest_row(entries: list[dict]) -> pa.Table:
    """One manifest row summing several commits of one unit of work."""
    return manifest_row_table([_sum_rows(entries)])


def _sum_rows(entries: list[dict]) -> dict:
    if not entries:
        return {"shard": ""}
    out = dict(entries[0])
    for e in entries[1:]:
        for k, v in e.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
    return out


def error_row(stage: str, request_key: str, doc_id: str | None, reason: str) -> dict:
    return {"stage": stage, "request_key": request_key, "doc_id": doc_id, "error": reason}


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


# -- driver side -----------------------------------------------------------------------------------------


def model_actor_kwargs(config: EntiGraphConfig) -> dict[str, Any]:
    """`map_batches` keyword arguments for a model stage: an actor pool with explicit bounds and resources."""
    from ray.data import ActorPoolStrategy  # lazy: Ray loads only when a stage runs

    res = config.resources
    in_flight = res.units_in_flight_per_actor  # calls run at once on one actor, sharing its engine (make_engine)
    kwargs: dict[str, Any] = {
        "compute": ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors,
                                     max_concurrent_calls_per_actor=in_flight,
                                     enable_true_multi_threading=in_flight > 1),
        "num_cpus": res.num_cpus_per_actor,
        "batch_size": res.batch_size,
        "batch_format": "pyarrow",
        # One call = one committed shard; the driver sees results as they commit.
        "zero_copy_batch": True,
        # Ray Data restarts an actor that dies and retries the call it was running, without bound; the bound is
        # ours, not Ray's (a call to an actor still loading its model would use up Ray's retry count): the
        # attempt past resources.max_unit_attempts records the unit as failed without running it (run_unit).
    }
    if res.num_gpus_per_actor:
        kwargs["num_gpus"] = res.num_gpus_per_actor
    if res.accelerator_type:
        kwargs["accelerator_type"] = res.accelerator_type
    return kwargs


def cpu_actor_kwargs(config: EntiGraphConfig, batch_size: int = 1) -> dict[str, Any]:
    """`map_batches` keyword arguments for CPU work done by actors of its own (ingest's tokenizers, heuristic
    extraction): the CPU pool (`resources.cpu`), no GPU and no accelerator type, so that reading and
    tokenizing never hold a model actor."""
    from ray.data import ActorPoolStrategy  # lazy: Ray loads only when a stage runs

    pool = config.resources.cpu
    return {"compute": ActorPoolStrategy(min_size=1, max_size=pool.max_workers), "num_cpus": pool.num_cpus_per_worker,
            "num_gpus": 0, "batch_size": batch_size, "batch_format": "pyarrow", "zero_copy_batch": True}


def cpu_task_kwargs(config: EntiGraphConfig, units: int) -> dict[str, Any]:
    """`map_batches` keyword arguments for CPU tasks (curation, dedup) in the CPU pool (`resources.cpu`):
    at most `resources.cpu.max_workers` at once, and never more than the `units` there are."""
    from ray.data import TaskPoolStrategy  # lazy: Ray loads only when a stage runs

    pool = config.resources.cpu
    size = max(1, min(pool.max_workers, units))
    return {"compute": TaskPoolStrategy(size=size), "num_cpus": pool.num_cpus_per_worker}


def read_shards(urls: list[str], include_paths: bool = False):
    import ray.data  # lazy: Ray loads only when a stage runs

    paths, fs = storage.for_ray_data(urls)
    return ray.data.read_parquet(paths, filesystem=fs, shuffle=None, include_paths=include_paths)


def units_of_work(ds, config: EntiGraphConfig):
    """One block per actor call, so that each committed shard reaches the driver as soon as it is written
    (a bigger block is only handed on when all of its batches are done) and actors share the work evenly."""
    return ds.repartition(target_num_rows_per_block=config.resources.batch_size)


def partition_ids(num_partitions: int, blocks: int = 64):
    """The partition ids 0..P-1 as a dataset of a few blocks: one task per block plans or seals them."""
    import ray.data  # lazy: Ray loads only when a stage runs

    return ray.data.from_items([{"partition": p} for p in range(num_partitions)],
                               override_num_blocks=max(1, min(num_partitions, blocks)))


def run_partition_tasks(num_partitions: int, fn, **fn_kwargs) -> list[dict]:
    """Run a function over every partition id on CPU tasks and return what it reported per partition
    (P small rows: the only per-partition data the driver holds)."""
    start_attempt_counter()
    ds = partition_ids(num_partitions).map_batches(bounded_task(fn, f"the partition task {fn.__name__}"),
                                                   fn_kwargs=fn_kwargs, batch_size=None, num_cpus=PARTITION_TASK_CPUS)
    return [r for r in ds.iter_rows()]


def seal_stage(store: PartitionedStore, identity: str, fn, extra: dict | None = None, **fn_kwargs) -> dict:
    """Seal every partition of a stage on the workers (`fn`: a corpus.seal_* function) and write the stage
    summary; returns the summary."""
    sealed = [json.loads(r["sealed"]) for r in run_partition_tasks(store.num_partitions, fn, **fn_kwargs)]
    return store.write_summary(identity, sealed, extra)


def totals_from_summary(stage: str, summary: dict, **fields: int) -> ledger.StageTotals:
    t = summary.get("totals", {})
    totals = ledger.StageTotals(stage, **fields)
    for k in ("num_shards", "num_ok", "num_failed", "num_prompt_tokens", "num_cached_tokens",
              "num_generated_tokens", "num_retries", "num_dropped"):
        setattr(totals, k, int(t.get(k, 0)))
    totals.busy_s = float(t.get("busy_s", 0.0))
    totals.hosts, totals.node_ids = list(t.get("hosts", [])), list(t.get("node_ids", []))
    return totals


def current_totals(stage: str, summary: dict, rows_stat: str, run: ledger.StageTotals | None = None
                   ) -> ledger.StageTotals:
    """A sealed stage's totals: tokens and shards from its markers; ok = the current rows, failed = what the
    plan still misses (failed requests that a later run retried are not counted twice). `run`: this
    invocation's totals, whose expected and done_before are kept."""
    totals = totals_from_summary(stage, summary)
    stats = summary.get("stats", {})
    totals.num_ok, totals.num_failed = int(stats.get(rows_stat, 0)), int(stats.get("num_missing", 0))
    totals.expected = run.expected if run is not None else totals.num_ok + totals.num_failed
    totals.done_before = run.done_before if run is not None else totals.expected
    return totals


def items(rows: list[dict]):
    """A small driver-made list (URLs, files) as a dataset with one row per block: one task or call each."""
    import ray.data  # lazy: Ray loads only when a stage runs

    return ray.data.from_items(rows, override_num_blocks=max(len(rows), 1))


@dataclass
class StagePlan:
    """What a stage will do in this invocation: its totals so far and the dataset of what is left."""

    totals: ledger.StageTotals  # `expected` and `done_before` set
    dataset: Any = None  # rows for the worker; None when nothing is left to do
    units: int = 0  # size of the progress line (what is left)
    unit: str = "requests"
    per_row_units: int | None = None  # each commit row counts this many units (else its num_ok + num_failed)
    worker_args: dict[str, Any] = field(default_factory=dict)  # what plan() resolved for apply()


class Stage:
    """The driver half of a stage. Subclasses set `name` and implement `plan` and `apply`."""

    name: str = ""  # the stage's name in run.json, the ledger and progress lines
    checks_errors: bool = True  # apply max_error_fraction to this stage's failed requests

    def enabled(self, ctx: "RunContext") -> bool:
        return True

    def folder(self, ctx: "RunContext") -> str:
        """The stage folder it commits to under output_dir."""
        return self.name

    def plan(self, ctx: "RunContext") -> StagePlan:
        raise NotImplementedError

    def apply(self, ctx: "RunContext", plan: StagePlan):
        """The worker over the planned dataset: a lazy Ray dataset of commit rows."""
        raise NotImplementedError

    def finish(self, ctx: "RunContext", totals: ledger.StageTotals, plan: StagePlan | None = None
               ) -> ledger.StageTotals:
        """After the last commit: seal the stage's partitions, and what it learned (e.g. how many documents)."""
        return totals


def run_stage(stage: Stage, ctx: "RunContext", on_start=lambda totals: None) -> ledger.StageTotals:
    """Plan a stage, report its plan, run its workers to the end and return its totals."""
    plan = stage.plan(ctx)
    on_start(plan.totals)
    if plan.dataset is None:
        return stage.finish(ctx, plan.totals, plan)
    start_attempt_counter()
    progress = ledger.Progress(stage.name, plan.units, unit=plan.unit)
    progress.start(plan.totals.done_before)
    totals = plan.totals
    try:
        for row in stage.apply(ctx, plan).iter_rows():
            totals.add(row)
            if plan.per_row_units is None:
                progress.update(row["num_ok"], row["num_failed"], row["num_generated_tokens"])
            else:
                progress.update(plan.per_row_units, 0, row["num_generated_tokens"])
    finally:
        progress.close()
    return stage.finish(ctx, totals, plan)


def check_errors(stage: str, totals: ledger.StageTotals, config: EntiGraphConfig) -> None:
    """Raise `StageFailed` when more than max_error_fraction of a stage's requests failed."""
    attempted = totals.num_ok + totals.num_failed
    if attempted and totals.num_failed / attempted > config.max_error_fraction:
        raise StageFailed(
            f"Stage {stage!r}: {totals.num_failed} of {attempted} requests failed "
            f"({totals.num_failed / attempted:.0%} > max_error_fraction {config.max_error_fraction:.0%}). "
            f"Reasons are in {storage.join(config.output_dir, storage.ERRORS, stage)}. Fix the cause and re-run "
            "(committed work is kept), or raise max_error_fraction."
        )
