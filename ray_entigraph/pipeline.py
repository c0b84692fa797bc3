"""The synthesis pipeline: the stage order, the run's state in run.json, and the summary. Stage logic lives in
the stage modules (`stages/`), each holding its driver half and its worker half.

Each stage reads the previous stage's committed shards from storage, skips what is already committed
(request keys), and commits its own shards; so a run can stop after any stage and a re-run continues.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ray_entigraph import ledger, schema, storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.context import RunContext
from ray_entigraph.engines import preflight
from ray_entigraph.errors import EntiGraphError, StageFailed, explain_stage_failure, is_worker_failure
from ray_entigraph.layout import Layout
from ray_entigraph.lease import fenced_layout, lease_for
from ray_entigraph.runtime import init_ray, save_resolved_config
from ray_entigraph.stages.base import Stage, check_errors, run_stage
from ray_entigraph.stages.curate import DROP_CATEGORIES, Curate
from ray_entigraph.stages.extract import Extract
from ray_entigraph.stages.ingest import Ingest
from ray_entigraph.stages.judge import Judge
from ray_entigraph.stages.synthesize import Synthesize

logger = logging.getLogger(__name__)

__all__ = ["STAGES", "StageFailed", "SynthesisSummary", "curation_summary", "run_stages", "synthesize"]

# The stage order. Each stage says itself whether this run needs it (`Stage.enabled`).
STAGES: tuple[type[Stage], ...] = (Ingest, Extract, Synthesize, Judge, Curate)


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
    synthetic_url: str = ""  # the current synthesis identity's folder

    @property
    def rows(self) -> int:
        """What the run produced for training: synthetic rows (curated ones when curating), and documents."""
        kept = self.curation["kept"] if self.curation else self.num_synthetic_rows
        return kept + self.num_documents

    @property
    def num_failed(self) -> int:
        """Requests that failed and that a re-run retries (rejected documents are not retried)."""
        return self.num_extract_failed + self.num_synthesis_failed

    def lines(self) -> list[str]:
        parse_rate = self.num_model_parsed / max(self.num_extracted + self.num_extract_failed, 1)
        return [
            f"documents        {self.num_documents} ingested, {self.num_document_errors} rejected (see errors/)",
            f"extraction       {self.num_extracted} documents, model output parsed for {self.num_model_parsed} "
            f"({parse_rate:.0%}), {self.num_extract_failed} failed, {self.mean_entities:.1f} entities/doc",
            f"plan             {self.num_tasks_planned} synthesis tasks for this config (summaries, pairs, triplets)",
            f"synthetic rows   {self.num_synthetic_rows} "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(self.rows_by_kind.items()))}), "
            f"{self.num_synthesis_failed} failed",
            f"tokens           {self.num_prompt_tokens} prompt ({self.num_cached_tokens} served from the engine's "
            f"prefix cache, {self.num_cached_tokens / max(self.num_prompt_tokens, 1):.0%}), "
            f"{self.num_generated_tokens} generated, {self.num_retries} request retries",
            f"throughput       {self.generated_tokens_per_s:.1f} generated tokens/s "
            f"over {self.wall_s:.0f}s of this run",
            f"output           {self.synthetic_url}",
        ] + (self._curation_lines() if self.curation else [])

    def _curation_lines(self) -> list[str]:
        c = self.curation
        grounding = "-" if c["mean_grounding"] is None else f"{c['mean_grounding']:.2f}"
        return [
            f"curated          {c['kept']} rows kept, mean grounding {grounding}; dropped {c['dropped']}: "
            f"{c['dropped_grounding']} below min_grounding, {c['dropped_judge']} below min_judge_score or unrated, "
            f"{c['dropped_duplicate']} near-duplicates, {c['dropped_output']} by output filters, "
            f"{c['dropped_short']} empty after repair ({c['sentences_dropped']} sentences removed from kept rows)",
            f"curated output   {c['url']} (drops and reasons: {c['errors_url']})",
        ] + ([f"judge            {c['judge_rated']} rows rated, mean score "
              f"{'-' if c['mean_judge_score'] is None else format(c['mean_judge_score'], '.2f')}, {c['judge_unrated']} "
              "without a rating (answers in errors/judged/)"] if "judge_rated" in c else [])


class RunState:
    """run.json: the invocation's state, stage by stage, written as it changes (what `status` reads)."""

    def __init__(self, ctx: RunContext, command: str):
        self.output_dir = ctx.config.output_dir
        self.started = time.time()
        self.data: dict = {"command": command, "state": "running", "started_at": self.started,
                           "config_hash": ctx.config.config_hash(), "stages": {}, "folders": {}}
        self.write()

    def write(self) -> None:
        ledger.write_run_state(self.output_dir, self.data)

    def stage(self, name: str, folder: str, totals: ledger.StageTotals, started: float, finished: float | None) -> None:
        self.data["stage"] = name
        self.data["stages"][name] = ledger.stage_record(totals, started, finished)
        if folder != name:
            self.data["folders"][name] = folder
        self.write()

    def failed(self, error: str) -> None:
        self.data.update(state="failed", error=error, finished_at=time.time())
        try:
            self.write()
        except Exception as write_exc:  # noqa: BLE001 - storage may be what failed; keep the original error
            logger.warning("could not record the failure in run.json: %s", write_exc)

    def finished(self, summary: dict) -> None:
        self.data.update(state="finished", finished_at=time.time(), summary=summary)
        self.write()


def run_stages(ctx: RunContext, stages: list[Stage], state: RunState) -> dict[str, ledger.StageTotals]:
    """Run the stages in order, recording each in run.json; worker failures become `StageFailed`."""
    totals: dict[str, ledger.StageTotals] = {}
    current: str | None = None
    try:
        for stage in stages:
            current = stage.name
            folder = stage.folder(ctx)
            started = time.time()
            state.data["stage"] = stage.name
            state.write()
            totals[stage.name] = run_stage(
                stage, ctx, on_start=lambda base, s=stage, f=folder, t=started: state.stage(s.name, f, base, t, None))
            state.stage(stage.name, folder, totals[stage.name], started, time.time())
            if stage.checks_errors:
                check_errors(stage.name, totals[stage.name], ctx.config)
    except EntiGraphError as exc:
        state.failed(str(exc))
        raise
    except Exception as exc:
        if not (is_worker_failure(exc) or isinstance(exc, OSError)):
            state.failed(f"{type(exc).__name__}: {exc}")
            raise  # a bug on the driver keeps its type and traceback
        failure = StageFailed(explain_stage_failure(current, exc, ctx.config.output_dir))
        state.failed(str(failure))
        raise failure from exc
    except KeyboardInterrupt:
        state.failed("interrupted")
        raise
    return totals


def synthesize(config: EntiGraphConfig, ingest_only: bool = False, ctx: RunContext | None = None) -> SynthesisSummary:
    """ingest -> extract -> plan -> synthesize (-> judge -> curate), each stage resumable from what storage
    holds (`ingest_only`: the documents alone, which is all the Raw CPT baseline needs)."""
    ctx = ctx or RunContext.resolve(config)  # bad input, prompts or config fail here, before Ray starts
    for warning in preflight(config):  # so does an engine that cannot work
        logger.warning("%s", warning)
    storage.check_writable(config.output_dir)
    Layout(config.output_dir, num_partitions=config.num_partitions).check_version(create=True)
    with lease_for(config, "synthesize"):  # one writer per output_dir; every commit checks the fence
        ctx.layout = fenced_layout(config)
        save_resolved_config(config)
        state = RunState(ctx, "synthesize")
        init_ray(config)
        stages = [cls() for cls in STAGES]
        stages = [s for s in stages if s.enabled(ctx) and (not ingest_only or isinstance(s, Ingest))]
        totals = run_stages(ctx, stages, state)
        summary = summarize(ctx, time.time() - state.started, totals)
        state.finished(summary.__dict__)
        return summary


def summarize(ctx: RunContext, wall_s: float, run_totals: dict[str, ledger.StageTotals]) -> SynthesisSummary:
    """The run's summary, from committed storage (whole run) plus this invocation's wall time."""
    config, out = ctx.config, ctx.config.output_dir
    # the stage summaries the partitions were sealed into: three reads, whatever the corpus size
    docs, ext, syn = (_current_summary(store, identity) for store, identity in (
        (ctx.layout.documents, ctx.documents_identity), (ctx.entities_store, ctx.entities_identity),
        (ctx.synthetic_store, ctx.synthetic_identity)))
    ext_stats, syn_stats = ext.get("stats", {}), syn.get("stats", {})
    ext_tokens, syn_tokens = ext.get("totals", {}), syn.get("totals", {})
    generated_now = sum(t.num_generated_tokens for t in run_totals.values())
    curation = curation_summary(ctx) if config.curate.enabled else None

    def tokens(key: str) -> int:
        return int(ext_tokens.get(key, 0)) + int(syn_tokens.get(key, 0))

    return SynthesisSummary(
        output_dir=out,
        num_documents=int(docs.get("stats", {}).get("num_documents", 0)),
        num_document_errors=int(docs.get("totals", {}).get("num_failed", 0)),
        num_extracted=int(ext_stats.get("num_extracted", 0)),
        num_extract_failed=int(ext_stats.get("num_missing", 0)),
        num_tasks_planned=run_totals[schema.SYNTHESIZE].expected if schema.SYNTHESIZE in run_totals else 0,
        num_model_parsed=int(ext_stats.get("num_model_parsed", 0)),
        mean_entities=int(ext_stats.get("num_entities", 0)) / max(int(ext_stats.get("num_extracted", 0)), 1),
        num_synthetic_rows=int(syn_stats.get("num_rows", 0)),
        num_synthesis_failed=int(syn_stats.get("num_missing", 0)),
        num_prompt_tokens=tokens("num_prompt_tokens"),
        num_cached_tokens=tokens("num_cached_tokens"),
        num_generated_tokens=tokens("num_generated_tokens"),
        num_retries=tokens("num_retries"),
        wall_s=wall_s,
        generated_tokens_per_s=generated_now / wall_s if wall_s > 0 else 0.0,
        rows_by_kind=dict(syn_stats.get("rows_by_kind", {})),
        synthetic_url=ctx.synthetic_store.url,
        curation=curation,
    )


def _current_summary(store, identity: str) -> dict:
    summary = store.summary()
    return summary if summary is not None and summary.get("identity") == identity else {}


def curation_summary(ctx: RunContext) -> dict:
    """Kept and dropped rows of the current curated dataset, from its commit markers."""
    store = ctx.layout.store(ctx.curated_stage())
    entries = store.manifest_entries()
    kept = sum(int(e.get("num_ok", 0)) for e in entries)
    weighted = sum((e.get("mean_grounding") or 0.0) * int(e.get("num_ok", 0)) for e in entries)
    return {
        "url": store.url, "errors_url": store.errors_url, "kept": kept,
        "dropped": sum(int(e.get("num_dropped", 0)) for e in entries),
        **{f"dropped_{k}": sum(int(e.get(f"num_dropped_{k}", 0)) for e in entries)
           for k in DROP_CATEGORIES},
        "sentences_dropped": sum(int(e.get("num_sentences_dropped", 0)) for e in entries),
        "mean_grounding": weighted / kept if kept else None,
        **(_judge_summary(ctx) if ctx.config.curate.judge else {}),
    }


def _judge_summary(ctx: RunContext) -> dict:
    """The judge's rated and unrated rows, summed over partitions by partition tasks (P small rows)."""
    from ray_entigraph.stages.base import run_partition_tasks
    from ray_entigraph.stages.judge import judge_summary

    judged = ctx.layout.partitioned(ctx.judge_stage)
    parts = run_partition_tasks(judged.num_partitions, judge_summary, judged=judged)
    rated = sum(int(r["rated"]) for r in parts)
    return {"judge_rated": rated, "judge_unrated": sum(int(r["unrated"]) for r in parts),
            "mean_judge_score": sum(float(r["score"]) for r in parts) / rated if rated else None}


