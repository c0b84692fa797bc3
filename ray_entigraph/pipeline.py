"""Composition only: which stage runs after which, over which committed data. No stage logic here.

Each stage reads the previous stage's committed shards from storage, skips what is already committed
(request keys), and commits its own shards; so a run can stop after any stage and a re-run continues.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass

from ray_entigraph import ledger, schema, storage
from ray_entigraph.config import EntiGraphConfig

logger = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """A stage exceeded max_error_fraction, or its workers failed; the message says which and why."""


@dataclass
class SynthesisSummary:
    output_dir: str
    num_documents: int
    num_document_errors: int
    num_extracted: int
    num_extract_failed: int
    num_tasks_planned: int
    num_model_parsed: int
    mean_entities: float
    num_synthetic_rows: int
    num_synthesis_failed: int
    num_prompt_tokens: int
    num_cached_tokens: int
    num_generated_tokens: int
    num_retries: int
    wall_s: float
    generated_tokens_per_s: float
    rows_by_kind: dict
    curation: dict | None = None  # what curate kept and dropped, when curate.enabled

    def lines(self) -> list[str]:
        parse_rate = self.num_model_parsed / max(self.num_extracted + self.num_extract_failed, 1)
        return [
            f"documents        {self.num_documents} ingested, {self.num_document_errors} rejected (see errors/)",
            f"extraction       {self.num_extracted} documents, model output parsed for {self.num_model_parsed} "
            f"({parse_rate:.0%}), {self.num_extract_failed} failed, {self.mean_entities:.1f} entities/doc",
            f"plan             {self.num_tasks_planned} synthesis tasks for this config (summaries, pairs, triplets)",
            f"synthetic rows   {self.num_synthetic_rows} ({', '.join(f'{k}: {v}' for k, v in sorted(self.rows_by_kind.items()))}), "
            f"{self.num_synthesis_failed} failed",
            f"tokens           {self.num_prompt_tokens} prompt ({self.num_cached_tokens} served from the engine's "
            f"prefix cache, {self.num_cached_tokens / max(self.num_prompt_tokens, 1):.0%}), "
            f"{self.num_generated_tokens} generated, {self.num_retries} request retries",
            f"throughput       {self.generated_tokens_per_s:.1f} generated tokens/s over {self.wall_s:.0f}s of this run",
            f"output           {storage.join(self.output_dir, schema.SYNTHESIZE)}",
        ] + (self._curation_lines() if self.curation else [])

    def _curation_lines(self) -> list[str]:
        c = self.curation
        grounding = "-" if c["mean_grounding"] is None else f"{c['mean_grounding']:.2f}"
        return [
            f"curated          {c['kept']} rows kept, mean grounding {grounding}; dropped {c['dropped']}: "
            f"{c['dropped_grounding']} below min_grounding, {c['dropped_judge']} below min_judge_score or unrated, "
            f"{c['dropped_duplicate']} near-duplicates, "
            f"{c['dropped_short']} empty after repair ({c['sentences_dropped']} sentences removed from kept rows)",
            f"curated output   {c['url']} (drops and reasons: {c['errors_url']})",
        ] + ([f"judge            {c['judge_rated']} rows rated, mean score "
              f"{'-' if c['mean_judge_score'] is None else format(c['mean_judge_score'], '.2f')}, {c['judge_unrated']} "
              "without a rating (answers in errors/judged/)"] if "judge_rated" in c else [])


def init_ray(config: EntiGraphConfig) -> None:
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        # RAY_ADDRESS (set by `ray job submit`) connects to the cluster; otherwise a local instance starts.
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # our own progress line carries an ETA in request units
    ctx.print_on_execution_start = False


def save_resolved_config(config: EntiGraphConfig) -> None:
    storage.write_text(storage.join(config.output_dir, "config.yaml"), config.to_yaml())


def _read_shards(urls: list[str], include_paths: bool = False):
    import ray.data

    paths, fs = storage.for_ray_data(urls)
    return ray.data.read_parquet(paths, filesystem=fs, shuffle=None, include_paths=include_paths)


def _units_of_work(ds, config: EntiGraphConfig):
    """One block per actor call, so that each committed shard reaches the driver as soon as it is written
    (a bigger block is only handed on when all of its batches are done) and actors share the work evenly."""
    return ds.repartition(target_num_rows_per_block=config.resources.batch_size)


def _drain(ds, progress: ledger.Progress, per_row_units: int | None = None,
           base: ledger.StageTotals | None = None) -> ledger.StageTotals:
    """Run a stage to the end, streaming its manifest rows into the progress line."""
    totals = base or ledger.StageTotals(progress.stage, expected=progress.total)
    for row in ds.iter_rows():
        totals.add(row)
        if per_row_units is None:
            progress.update(row["num_ok"], row["num_failed"], row["num_generated_tokens"])
        else:
            progress.update(per_row_units, 0, row["num_generated_tokens"])
    return totals


def _check_errors(stage: str, totals: ledger.StageTotals, config: EntiGraphConfig) -> None:
    attempted = totals.num_ok + totals.num_failed
    if attempted and totals.num_failed / attempted > config.max_error_fraction:
        raise StageFailed(
            f"Stage {stage!r}: {totals.num_failed} of {attempted} requests failed "
            f"({totals.num_failed / attempted:.0%} > max_error_fraction {config.max_error_fraction:.0%}). "
            f"Reasons are in {storage.join(config.output_dir, storage.ERRORS, stage)}. Fix the cause and re-run "
            "(committed work is kept), or raise max_error_fraction."
        )


_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit|Timeout)):\s*(.+)$")
_WRAPPERS = ("UserCodeException", "RayTaskError", "RayActorError")


def _root_cause(exc: BaseException) -> str:
    """The original error behind Ray's wrappers: Ray Data re-raises a UDF failure as UserCodeException whose
    cause is a RayTaskError carrying the worker's traceback as text; its last `XError: message` line is it."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        nxt = exc.__cause__ or getattr(exc, "cause", None)
        exc = nxt if isinstance(nxt, BaseException) else None
    for item in chain:
        for line in reversed(str(item).splitlines()):
            m = _ERROR_LINE.match(line)
            if m and not any(w in m.group(1) for w in _WRAPPERS):
                return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}"
    last = chain[-1]
    return f"{type(last).__name__}: {str(last).strip().splitlines()[-1] if str(last).strip() else ''}"


def _explain_failure(stage: str | None, exc: BaseException, config: EntiGraphConfig) -> str:
    """One paragraph for the user: which stage, the root cause, and that a re-run continues."""
    detail = _root_cause(exc)
    storage_hint = ""
    if any(word in detail.lower() for word in ("endpoint", "connect", "s3", "bucket", "permission", "credential", "no space")):
        storage_hint = (f" This looks like a storage problem with {config.output_dir!r}: check the endpoint "
                        "(AWS_ENDPOINT_URL), credentials and free space.")
    return (f"Stage {stage!r} failed: {detail[:500].rstrip('.')}.{storage_hint} Committed shards are "
            "kept; re-run the same command to continue from them.")


def run_ingest(config: EntiGraphConfig, files: list[tuple[str, str]]) -> ledger.StageTotals:
    import ray.data

    from ray_entigraph.stages.common import model_actor_kwargs
    from ray_entigraph.stages.ingest import IngestStage

    kwargs = model_actor_kwargs(config)
    kwargs["batch_size"] = 1  # one input file per committed shard: deterministic shard contents
    ds = ray.data.from_items([{"path": url, "format": fmt} for url, fmt in files])
    ds = ds.map_batches(IngestStage, fn_constructor_args=(config.model_dump_json(),), **kwargs)
    totals = _drain(ds, ledger.Progress(schema.INGEST, len(files), unit="files"), per_row_units=1)
    totals.expected = totals.num_ok + totals.num_failed  # documents, known only once the files are read
    return totals


def _document_index(config: EntiGraphConfig) -> dict[str, str]:
    """doc_id -> the committed documents shard to read it from, for the *current* input files only (an
    output_dir reused with other inputs keeps its old documents out), each document once (the same text in
    two files is one document), capped at input.max_documents."""
    from ray_entigraph.stages.ingest import list_input_files

    current = {url for url, _ in list_input_files(config.input)}
    store = storage.StageStore(config.output_dir, schema.INGEST)
    index: dict[str, str] = {}
    for entry in store.manifest_entries():
        if entry.get("source") not in current or not entry.get("rows"):
            continue
        url = storage.join(store.url, entry["file"])
        for doc_id in storage.read_parquet(url, ["doc_id"]).column("doc_id").to_pylist():
            index.setdefault(doc_id, url)
    doc_ids = sorted(index)
    if config.input.max_documents is not None:
        doc_ids = doc_ids[: config.input.max_documents]
    return {d: index[d] for d in doc_ids}


def _read_documents(index: dict[str, str]):
    """The indexed documents as a Ray dataset, each from the one shard the index names."""
    urls = sorted(set(index.values()))
    paths, _ = storage.for_ray_data(urls)
    wanted = {doc_id: paths[urls.index(url)] for doc_id, url in index.items()}
    ds = _read_shards(urls, include_paths=True)
    return ds.filter(lambda r: wanted.get(r["doc_id"]) == r["path"]).drop_columns(["path"])


def run_extract(config: EntiGraphConfig, on_start=lambda totals: None) -> ledger.StageTotals:
    from ray_entigraph.stages.common import model_actor_kwargs
    from ray_entigraph.stages.extract import EntityExtractionStage, extraction_key

    index = _document_index(config)
    keys = {d: extraction_key(config, d) for d in index}
    done = set(storage.StageStore(config.output_dir, schema.EXTRACT).iter_key_column("request_key"))
    todo = {d: k for d, k in keys.items() if k not in done}
    progress = ledger.Progress(schema.EXTRACT, len(todo), unit="documents")
    base = ledger.StageTotals(schema.EXTRACT, expected=len(keys), done_before=len(keys) - len(todo))
    on_start(base)
    if not todo:
        return base
    ds = _read_documents({d: index[d] for d in todo}).select_columns(["doc_id", "title", "text"])
    ds = ds.add_column("request_key", lambda batch: batch["doc_id"].map(todo), batch_format="pandas")
    ds = _units_of_work(ds, config).map_batches(EntityExtractionStage, fn_constructor_args=(config.model_dump_json(),), **model_actor_kwargs(config))
    return _drain(ds, progress, base=base)


def _planning_input(config: EntiGraphConfig):
    """(dataset of rows to plan from, per-document task allocation or None, expected task count)."""
    from ray_entigraph.stages.extract import extraction_key
    from ray_entigraph.stages.plan import capacity
    from ray_entigraph.text.plan import allocate_budget

    index = _document_index(config)
    if config.synthesis.augmenter == "rephrase":
        from ray_entigraph.prompts import load_prompt_set

        per_doc = len(load_prompt_set(config.synthesis.prompts).rephrase) * config.plan.rephrase_repeats
        if not index:
            return None, None, 0
        return _read_documents(index).select_columns(["doc_id", "title", "text"]), None, per_doc * len(index)
    keys = {extraction_key(config, d) for d in index}
    store = storage.StageStore(config.output_dir, schema.EXTRACT)
    capacities, num_summaries = {}, 0
    for url in store.shard_urls():
        table = storage.read_parquet(url, ["request_key", "doc_id", "entities", "summary"])
        for row in table.to_pylist():
            if row["request_key"] in keys:
                capacities[row["doc_id"]] = capacity(config, len(row["entities"] or []))
                num_summaries += bool(row["summary"])
    allocation = allocate_budget(capacities, config.plan.max_tasks_total)
    if not capacities:
        return None, allocation, 0
    ds = _read_shards(store.shard_urls())
    ds = ds.select_columns(["request_key", "doc_id", "title", "text", "entities", "summary"]).filter(lambda r: r["request_key"] in keys)
    return ds, allocation, sum(allocation.values()) + num_summaries


def run_synthesize(config: EntiGraphConfig, on_start=lambda totals: None) -> ledger.StageTotals:
    from ray_entigraph.stages.common import model_actor_kwargs
    from ray_entigraph.stages.plan import plan_groups
    from ray_entigraph.stages.synthesize import RelationSynthesisStage

    ds, allocation, expected = _planning_input(config)
    done = set(storage.StageStore(config.output_dir, schema.SYNTHESIZE).iter_key_column("task_id"))
    # committed rows of other configs (a changed prompt version) also count here: an estimate
    done_before = min(len(done), expected)
    progress = ledger.Progress(schema.SYNTHESIZE, expected - done_before)
    base = ledger.StageTotals(schema.SYNTHESIZE, expected=expected, done_before=done_before)
    on_start(base)
    if ds is None or expected == 0:
        return base
    ds = ds.flat_map(plan_groups, fn_kwargs={"config_json": config.model_dump_json(), "allocation": allocation, "done": done})
    ds = _units_of_work(ds, config).map_batches(RelationSynthesisStage, fn_constructor_args=(config.model_dump_json(),), **model_actor_kwargs(config))
    return _drain(ds, progress, base=base)


def run_judge(config: EntiGraphConfig, on_start=lambda totals: None) -> ledger.StageTotals:
    """Rate every synthetic row with the judge model (stages/judge.py), one judged shard per synthetic shard."""
    import ray.data

    from ray_entigraph.stages.common import model_actor_kwargs
    from ray_entigraph.stages.judge import JudgeStage, judge_config, judge_stage, judge_template

    judge_template(config)  # a prompt set without a judge template fails here, before an actor starts
    store = storage.StageStore(config.output_dir, judge_stage(config))
    sources = storage.StageStore(config.output_dir, schema.SYNTHESIZE).manifest_entries()
    done = {e.get("source_shard") for e in store.manifest_entries()}
    todo = [storage.join(config.output_dir, schema.SYNTHESIZE, e["file"]) for e in sources
            if e.get("rows", 0) > 0 and e["shard"] not in done]
    expected = sum(int(e.get("rows", 0)) for e in sources)
    base = ledger.StageTotals(schema.JUDGE, expected=expected, done_before=expected - sum(
        int(e.get("rows", 0)) for e in sources if e["shard"] not in done))
    on_start(base)
    if not todo:
        return base
    kwargs = model_actor_kwargs(judge_config(config))
    kwargs.update(batch_size=1, batch_format="numpy")  # one synthetic shard per call = one judged shard
    ds = ray.data.from_items([{"url": u} for u in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(JudgeStage, fn_constructor_args=(config.model_dump_json(), _document_index(config)), **kwargs)
    return _drain(ds, ledger.Progress(schema.JUDGE, base.expected - base.done_before), base=base)


def run_curate(config: EntiGraphConfig, on_start=lambda totals: None) -> ledger.StageTotals:
    """Score, repair, filter and deduplicate the synthetic corpus into output_dir/curated/<id> (stages/curate.py)."""
    import ray.data

    from ray_entigraph.stages.curate import candidate_pairs, commit_batch, curated_stage, signatures_batch
    from ray_entigraph.text.dedup import duplicates_to_drop

    stage = curated_stage(config)
    sources = storage.StageStore(config.output_dir, schema.SYNTHESIZE).shard_urls()
    done = {e.get("source_shard") for e in storage.StageStore(config.output_dir, stage).manifest_entries()}
    todo = [u for u in sources if storage.posixpath.basename(u).removesuffix(".parquet") not in done]
    base = ledger.StageTotals(stage, expected=len(sources), done_before=len(sources) - len(todo))
    on_start(base)
    if not todo:
        return base
    doc_index = _document_index(config)
    kwargs = {"config_json": config.model_dump_json(), "doc_index": doc_index}
    duplicates: dict[str, str] = {}
    if config.curate.dedup:
        # every shard's signatures (dedup is corpus-wide), bucketed by LSH band key; only pairs reach the driver
        shards = ray.data.from_items([{"url": u} for u in sources], override_num_blocks=max(len(sources), 1))
        bands = shards.map_batches(signatures_batch, fn_kwargs=kwargs, batch_size=1, num_cpus=1)
        pairs = bands.groupby("band").map_groups(candidate_pairs, batch_format="pyarrow")
        duplicates = duplicates_to_drop(((r["a"], r["b"], r["similarity"]) for r in pairs.iter_rows()),
                                        config.curate.dedup_threshold)
    progress = ledger.Progress(schema.CURATE, len(todo), unit="shards")
    ds = ray.data.from_items([{"url": u} for u in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(commit_batch, fn_kwargs={**kwargs, "duplicates": duplicates, "stage": stage},
                        batch_size=1, num_cpus=1)
    return _drain(ds, progress, per_row_units=1, base=base)


def summarize(config: EntiGraphConfig, wall_s: float, run_totals: dict[str, ledger.StageTotals]) -> SynthesisSummary:
    """The run's summary, from committed storage (whole run) plus this invocation's wall time."""
    out = config.output_dir
    docs = ledger.stage_totals(out, schema.INGEST)
    ext = ledger.stage_totals(out, schema.EXTRACT)
    syn = ledger.stage_totals(out, schema.SYNTHESIZE)
    ent_store = storage.StageStore(out, schema.EXTRACT)
    entities = ent_store.read(["entities", "entities_source"], schema.ENTITIES).to_pylist()
    kinds: dict[str, int] = {}
    for kind in storage.StageStore(out, schema.SYNTHESIZE).iter_key_column("kind"):
        kinds[kind] = kinds.get(kind, 0) + 1
    generated_now = sum(t.num_generated_tokens for t in run_totals.values())
    curation = curation_summary(config) if config.curate.enabled else None
    return SynthesisSummary(
        output_dir=out,
        num_documents=docs.num_ok,
        num_document_errors=docs.num_failed,
        num_extracted=ext.num_ok,
        num_extract_failed=ext.num_failed,
        num_tasks_planned=run_totals[schema.SYNTHESIZE].expected if schema.SYNTHESIZE in run_totals else 0,
        num_model_parsed=sum(1 for e in entities if e["entities_source"] == "model"),
        mean_entities=sum(len(e["entities"] or []) for e in entities) / max(len(entities), 1),
        num_synthetic_rows=syn.num_ok,
        num_synthesis_failed=syn.num_failed,
        num_prompt_tokens=ext.num_prompt_tokens + syn.num_prompt_tokens,
        num_cached_tokens=ext.num_cached_tokens + syn.num_cached_tokens,
        num_generated_tokens=ext.num_generated_tokens + syn.num_generated_tokens,
        num_retries=ext.num_retries + syn.num_retries,
        wall_s=wall_s,
        generated_tokens_per_s=generated_now / wall_s if wall_s > 0 else 0.0,
        rows_by_kind=kinds,
        curation=curation,
    )


def curation_summary(config: EntiGraphConfig) -> dict:
    """Kept and dropped rows of the current curated dataset, from its commit markers."""
    from ray_entigraph.stages.curate import curated_stage

    store = storage.StageStore(config.output_dir, curated_stage(config))
    entries = store.manifest_entries()
    kept = sum(int(e.get("num_ok", 0)) for e in entries)
    weighted = sum((e.get("mean_grounding") or 0.0) * int(e.get("num_ok", 0)) for e in entries)
    return {
        "url": store.url, "errors_url": store.errors_url, "kept": kept,
        "dropped": sum(int(e.get("num_dropped", 0)) for e in entries),
        **{f"dropped_{k}": sum(int(e.get(f"num_dropped_{k}", 0)) for e in entries)
           for k in ("grounding", "judge", "duplicate", "short", "document")},
        "sentences_dropped": sum(int(e.get("num_sentences_dropped", 0)) for e in entries),
        "mean_grounding": weighted / kept if kept else None,
        **(_judge_summary(config) if config.curate.judge else {}),
    }


def _judge_summary(config: EntiGraphConfig) -> dict:
    from ray_entigraph.stages.judge import judge_stage

    entries = storage.StageStore(config.output_dir, judge_stage(config)).manifest_entries()
    rated = sum(int(e.get("num_ok", 0)) for e in entries)
    weighted = sum((e.get("mean_judge_score") or 0.0) * int(e.get("num_ok", 0)) for e in entries)
    return {"judge_rated": rated, "judge_unrated": sum(int(e.get("num_failed", 0)) for e in entries),
            "mean_judge_score": weighted / rated if rated else None}


def synthesize(config: EntiGraphConfig, ingest_only: bool = False) -> SynthesisSummary:
    """ingest -> extract -> plan -> synthesize, each stage resumable from what storage holds (`ingest_only`:
    the documents alone, which is all the Raw CPT baseline needs)."""
    from ray_entigraph.stages.ingest import list_input_files

    from ray_entigraph.engines import preflight

    files = list_input_files(config.input)  # bad input fails here, before Ray starts
    for warning in preflight(config):  # so does an engine that cannot work
        logger.warning("%s", warning)
    storage.check_writable(config.output_dir)
    save_resolved_config(config)
    started = time.time()
    run = {"command": "synthesize", "state": "running", "started_at": started, "config_hash": config.config_hash()}
    ledger.write_run_state(config.output_dir, run)
    init_ray(config)
    totals: dict[str, ledger.StageTotals] = {}
    try:
        for stage, fn in ((schema.INGEST, lambda cb: run_ingest(config, files)),
                          (schema.EXTRACT, lambda cb: run_extract(config, cb)),
                          (schema.SYNTHESIZE, lambda cb: run_synthesize(config, cb)),
                          (schema.JUDGE, lambda cb: run_judge(config, cb)),
                          (schema.CURATE, lambda cb: run_curate(config, cb))):
            if stage == schema.EXTRACT and config.synthesis.augmenter == "rephrase":
                continue
            if ingest_only and stage != schema.INGEST:
                continue
            if stage == schema.CURATE and not config.curate.enabled:
                continue
            if stage == schema.JUDGE and not (config.curate.enabled and config.curate.judge):
                continue
            run["stage"] = stage
            ledger.write_run_state(config.output_dir, run)
            stage_started = time.time()

            def record_plan(base, stage=stage, stage_started=stage_started):
                run.setdefault("stages", {})[stage] = ledger.stage_record(base, stage_started, None)
                ledger.write_run_state(config.output_dir, run)

            totals[stage] = fn(record_plan)
            run.setdefault("stages", {})[stage] = ledger.stage_record(totals[stage], stage_started, time.time())
            ledger.write_run_state(config.output_dir, run)
            if stage not in (schema.INGEST, schema.CURATE):  # curate drops rows on purpose; drops are not errors
                _check_errors(stage, totals[stage], config)
    except BaseException as exc:
        failure = exc if isinstance(exc, StageFailed) else StageFailed(_explain_failure(run.get("stage"), exc, config))
        run.update(state="failed", error=str(failure), finished_at=time.time())
        try:
            ledger.write_run_state(config.output_dir, run)
        except Exception as write_exc:  # noqa: BLE001 - storage may be what failed; keep the original error
            logger.warning("could not record the failure in run.json: %s", write_exc)
        if failure is exc or isinstance(exc, KeyboardInterrupt):
            raise
        raise failure from exc
    summary = summarize(config, time.time() - started, totals)
    run.update(state="finished", finished_at=time.time(), summary=summary.__dict__)
    ledger.write_run_state(config.output_dir, run)
    return summary


def dry_run(config: EntiGraphConfig, assume_entities: int = 15) -> dict:
    """Read the inputs, count documents and tokens, and estimate requests, tokens and cost for the configured
    budget. Starts no Ray and no model (only the tokenizer). Entity counts come from committed extraction
    output where there is one, else `assume_entities` per document."""
    from transformers import AutoTokenizer

    from ray_entigraph.engines.bundled import resolve_model_path
    from ray_entigraph.prompts import load_prompt_set, render_chat
    from ray_entigraph.stages.extract import extraction_key
    from ray_entigraph.stages.ingest import documents_from_record, list_input_files, records_from_file
    from ray_entigraph.text.plan import estimate_synthesis

    files = list_input_files(config.input)
    tok = AutoTokenizer.from_pretrained(resolve_model_path(config.model.name, config.model.cache_dir))
    count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    doc_tokens: dict[str, int] = {}
    num_rejected = 0
    for url, fmt in files:
        for record in records_from_file(url, fmt, config.input):
            for row in documents_from_record(record, max_tokens=config.ingest.max_document_tokens,
                                             min_chars=config.ingest.min_document_chars, count_tokens=count):
                if row.get("error"):
                    num_rejected += 1
                elif config.input.max_documents is None or len(doc_tokens) < config.input.max_documents:
                    doc_tokens[row["doc_id"]] = row["num_tokens"]
    prompts = load_prompt_set(config.synthesis.prompts)

    def overhead(template, n_entities: int) -> int:
        if template is None:
            return 0
        values = {"title": "Title", "document": "", "entities": ""}
        values.update({f"entity_{i + 1}": "Entity" for i in range(n_entities)})
        text = tok.apply_chat_template(render_chat(template, values), tokenize=False, add_generation_prompt=True)
        return count(text)

    known = {}
    if config.synthesis.augmenter == "entigraph":
        keys = {extraction_key(config, d): d for d in doc_tokens}
        for url in storage.StageStore(config.output_dir, schema.EXTRACT).shard_urls():
            for row in storage.read_parquet(url, ["request_key", "entities"]).to_pylist():
                if row["request_key"] in keys:
                    known[keys[row["request_key"]]] = len(row["entities"] or [])
    entity_counts = {d: known.get(d, assume_entities) for d in doc_tokens}
    rephrase = None
    if config.synthesis.augmenter == "rephrase":
        rephrase = len(prompts.rephrase) * config.plan.rephrase_repeats
    relation_template = prompts.pair or next(iter(prompts.rephrase.values()), None)
    est = estimate_synthesis(
        doc_tokens, entity_counts,
        extract_overhead=overhead(prompts.extract, 0),
        relation_overhead=overhead(relation_template, 2),
        extract_max_new=config.extract.sampling.max_new_tokens * config.extract.max_attempts,
        relation_max_new=config.synthesis.sampling.max_new_tokens,
        max_pairs=config.plan.max_pairs_per_doc, max_triplets=config.plan.max_triplets_per_doc,
        budget=config.plan.max_tasks_total, rephrase_per_doc=rephrase,
    )
    est.update(
        num_input_files=len(files),
        num_rejected_inputs=num_rejected,
        num_documents_with_known_entities=len(known),
        assumed_entities_per_document=assume_entities,
        estimated_cost_usd=config.cost.estimate(est["num_prompt_tokens"], est["max_generated_tokens"]),
    )
    return est
