"""Extract: one request per document for a summary and its salient entities (EntiGraph step 1).

Bounded attempts per document (the first at the configured sampling, later ones sampled), a lenient
parser, entities grounded in the document, and an optional heuristic fallback. A document that still has
no entities is recorded with its reason in the errors table; nothing raises.
"""

from __future__ import annotations

import time

import pyarrow as pa

from ray_entigraph import schema
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.corpus import extraction_counts, extraction_todo, seal_entities
from ray_entigraph.engines import GenerationRequest, make_engine, sampling_params
from ray_entigraph.layout import EXTRACT_KIND as KIND
from ray_entigraph.layout import Layout
from ray_entigraph.ledger import StageTotals
from ray_entigraph.prompts import PromptSet, render_chat
from ray_entigraph.stages.base import (
    PARTITION_TASK_CPUS,
    Stage,
    StagePlan,
    Usage,
    bounded_task,
    commit_partitioned,
    cpu_actor_kwargs,
    current_totals,
    error_row,
    model_actor_kwargs,
    partition_ids,
    run_partition_tasks,
    run_unit,
    seal_stage,
    shard_identity,
    units_of_work,
    worker_config,
)
from ray_entigraph.text.identity import derive_seed
from ray_entigraph.text.parse import EXTRACTION_SCHEMA, ground_entities, heuristic_entities, parse_extraction


def entities_from_output(raw: str, document: str, max_entities: int, grounded: bool):
    """(parsed extraction, number of names dropped as not in the document). Names are grounded first and
    capped after, so invented names early in the model's list never push out real ones further down."""
    parsed = parse_extraction(raw)
    dropped = 0
    if grounded and parsed.entities:
        parsed.entities, dropped = ground_entities(parsed.entities, document)
    parsed.entities = parsed.entities[:max_entities]
    return parsed, dropped


def retry_sampling(base, attempt: int):
    """Attempt 0 uses the configured sampling; retries sample (greedy would repeat the same output)."""
    if attempt == 0 or base.temperature > 0:
        return base
    return type(base)(temperature=0.7, top_p=0.95, max_new_tokens=base.max_new_tokens,
                      repetition_penalty=base.repetition_penalty)


STREAM_UNITS_PER_SLOT = 2  # extraction units per actor slot below which synthesis waits for the plan instead


def streams_synthesis(config: EntiGraphConfig) -> bool:
    """Whether extraction's actors synthesize each document right after committing its entities
    (`resources.synthesize_while_extracting`): only when a model extracts and no global budget waits for
    every document's entities."""
    return (config.resources.synthesize_while_extracting and config.synthesis.augmenter == "entigraph"
            and config.extract.source == "model" and config.plan.max_tasks_total is None)


class EntityExtractionWorker:
    """Ray Data callable: documents -> entities rows, one committed shard per call; with `synthesis` (a
    synthesis id), then the documents' synthesis on the same engine, committed as the synthesize stage would."""

    def __init__(self, config: EntiGraphConfig, prompts: PromptSet, constrained: bool, extraction: str,
                 layout: Layout | None = None, synthesis: str | None = None):
        self.config = worker_config(config)
        # extract.source=heuristic reads names from the document: no model to load
        self.engine = make_engine(self.config) if self.config.extract.source == "model" else None
        self.prompts = prompts
        self.constrained = constrained  # the request key says so too (RunContext.extraction_key)
        layout = layout or Layout(config.output_dir, num_partitions=config.num_partitions)
        self.store = layout.entities(extraction)
        self.synthesizer = None
        if synthesis is not None and self.engine is not None:
            from ray_entigraph.stages.synthesize import RelationSynthesisWorker

            self.synthesizer = RelationSynthesisWorker(config, prompts, synthesis, layout, engine=self.engine)

    def __call__(self, batch):
        docs = batch.select(["doc_id", "title", "text", "request_key"]).to_pylist()
        out: dict = {}  # this call's own (several calls may run at once on one actor)
        table = run_unit(self.store.url, [d["request_key"] for d in docs], self.config.resources.max_unit_attempts,
                         lambda: self._run(docs, out), lambda reason: self._give_up(docs, reason), seen=out)
        # A unit retried because its actor died may have died in the synthesis below: its documents are left to
        # the synthesize stage, whose own attempt count bounds a unit that kills its actor every time.
        if self.synthesizer is not None and out.get("rows") and out["attempt"] == 1:
            table = self._synthesize(out["rows"], table)
        return table

    def _synthesize(self, rows: list[dict], table):
        """The committed documents' task groups, planned exactly as the synthesize stage plans them (no budget;
        nothing of these documents is committed yet, and a rerun rewrites the same shards), run in units of
        resources.batch_size groups, each committed on its own. Their generated tokens are added to the
        returned row, so progress shows all that the engine wrote."""
        from ray_entigraph.planning import plan_groups

        groups = [g for row in rows for g in plan_groups(row, config=self.config, prompts=self.prompts, budget=None,
                                                          done=set())]
        size, generated = self.config.resources.batch_size, 0
        for i in range(0, len(groups), size):
            generated += sum(self.synthesizer.run_groups(groups[i:i + size]).column("num_generated_tokens").to_pylist())
        counts = table.column("num_generated_tokens").to_pylist()
        counts[0] += generated
        return table.set_column(table.schema.get_field_index("num_generated_tokens"), "num_generated_tokens",
                                pa.array(counts, table.schema.field("num_generated_tokens").type))

    def _give_up(self, docs: list[dict], reason: str):
        errors = [error_row(schema.EXTRACT, d["request_key"], d["doc_id"], reason) for d in docs]
        return commit_partitioned(self.store, [], errors, row_schema=schema.ENTITIES, key_column="request_key",
                                  started=time.time(), stats=shard_identity(self.config, self.prompts.version))

    def _run(self, docs: list[dict], out: dict | None = None):
        started = time.time()
        cfg = self.config.extract
        state = {d["doc_id"]: {"attempts": 0, "parsed": None, "raw": "", "dropped": 0} for d in docs}
        usage = Usage()
        pending = list(docs)
        base = sampling_params(cfg.sampling)
        template = self.prompts.extract
        # With constrained decoding the grammar writes the whole object: no prefill then.
        structured = self.constrained
        prefix = "" if structured else template.response_prefix
        for attempt in range(cfg.max_attempts if self.engine is not None else 0):
            if not pending:
                break
            requests = [
                GenerationRequest(
                    key=d["doc_id"],
                    messages=render_chat(template, {"title": d["title"], "document": d["text"]}),
                    sampling=retry_sampling(base, attempt),
                    seed=derive_seed(self.config.seed, d["doc_id"], KIND, attempt),
                    prefix_key=d["doc_id"],
                    response_prefix=prefix,
                    json_schema=EXTRACTION_SCHEMA if structured else None,
                )
                for d in pending
            ]
            assert self.engine is not None
            results = self.engine.generate(requests)
            still = []
            for d, res in zip(pending, results):
                st = state[d["doc_id"]]
                st["attempts"] += 1
                usage.add(res)
                if res.error:
                    st["raw"], st["reason"] = "", res.error
                    still.append(d)
                    continue
                raw = prefix + res.text
                parsed, st["dropped"] = entities_from_output(raw, d["text"], cfg.max_entities,
                                                             cfg.require_entities_in_document)
                st["raw"] = raw
                if len(parsed.entities) >= cfg.min_entities:
                    st["parsed"] = parsed
                else:
                    st["reason"] = parsed.error or f"only {len(parsed.entities)} entities found in the document"
                    st["summary"] = st.get("summary") or parsed.summary
                    still.append(d)
            pending = still
        rows, errors = [], []
        for d in docs:
            st = state[d["doc_id"]]
            parsed = st["parsed"]
            row = {
                "request_key": d["request_key"], "doc_id": d["doc_id"], "title": d["title"], "text": d["text"],
                "num_attempts": st["attempts"], "raw_output": st["raw"],
                "model": self.engine.model_name if self.engine is not None else "heuristic",
                "prompt_version": self.prompts.version, "num_entities_dropped": st["dropped"],
            }
            if parsed is not None:
                rows.append({**row, "summary": parsed.summary, "entities": parsed.entities,
                             "entities_source": "model", "parse_how": parsed.how})
                continue
            heuristic = cfg.fallback == "heuristic" or self.engine is None
            fallback = heuristic_entities(d["text"], cfg.max_entities) if heuristic else []
            if len(fallback) >= cfg.min_entities:
                rows.append({**row, "summary": st.get("summary"), "entities": fallback, "entities_source": "heuristic",
                             "parse_how": "failed" if self.engine is not None else "not asked"})
            else:
                errors.append(error_row(schema.EXTRACT, d["request_key"], d["doc_id"],
                                        f"extraction failed after {st['attempts']} attempts: {st.get('reason')}"))
        table = commit_partitioned(self.store, rows, errors, row_schema=schema.ENTITIES, key_column="request_key",
                                   started=started, usage=usage,
                                   stats=shard_identity(self.config, self.prompts.version))
        if out is not None:
            out["rows"] = rows
        return table


class Extract(Stage):
    """Driver half: per partition, on the workers, the current documents whose extraction key is not
    committed (an anti-join inside the partition); then every partition sealed."""

    name = schema.EXTRACT

    def enabled(self, ctx) -> bool:
        return ctx.config.synthesis.augmenter == "entigraph"

    def folder(self, ctx) -> str:
        return ctx.entities_store.stage

    def streams(self, ctx, documents: int) -> bool:
        """Whether this run's extraction actors synthesize too (`streams_synthesis`; the synthesize stage always
        runs after this one, and does what is left): only when there are enough extraction units to keep every
        actor's slots busy, since a unit's synthesis stays on the actor that extracted it (a few documents
        synthesized from the plan instead spread over the whole pool)."""
        res = ctx.config.resources
        slots = res.max_actors * res.units_in_flight_per_actor
        units = -(-documents // res.batch_size)
        return streams_synthesis(ctx.config) and (slots == 1 or units >= STREAM_UNITS_PER_SLOT * slots)

    def plan(self, ctx) -> StagePlan:
        store, identity = ctx.entities_store, ctx.entities_identity
        summary = store.summary()
        if store.is_current(summary, identity):
            return StagePlan(current_totals(self.name, summary, "num_extracted"), worker_args={"complete": True})
        corpus = ctx.corpus()
        counts = run_partition_tasks(store.num_partitions, extraction_counts, corpus=corpus)
        expected, done = sum(r["documents"] for r in counts), sum(r["done"] for r in counts)
        totals = StageTotals(self.name, expected=expected, done_before=done)
        todo = bounded_task(extraction_todo, "extraction planning")
        ds = partition_ids(store.num_partitions).map_batches(todo, fn_kwargs={"corpus": corpus}, batch_size=1,
                                                             num_cpus=PARTITION_TASK_CPUS)
        return StagePlan(totals, dataset=ds if expected > done else None, units=expected - done, unit="documents",
                         worker_args={"stream": self.streams(ctx, expected - done)})

    def apply(self, ctx, plan):
        return units_of_work(plan.dataset, ctx.config).map_batches(
            EntityExtractionWorker,
            fn_constructor_args=(ctx.config, ctx.prompts, ctx.constrained_extraction, ctx.extraction_id, ctx.layout,
                                 ctx.synthesis_id if plan.worker_args["stream"] else None),
            # extract.source=heuristic loads no model: CPU actors, never the model pool
            **(cpu_actor_kwargs(ctx.config, ctx.config.resources.batch_size)
               if ctx.config.extract.source == "heuristic" else model_actor_kwargs(ctx.config)))

    def finish(self, ctx, totals: StageTotals, plan: StagePlan | None = None) -> StageTotals:
        if plan is not None and plan.worker_args.get("complete"):
            return totals
        summary = seal_stage(ctx.entities_store, ctx.entities_identity, seal_entities, corpus=ctx.corpus())
        return current_totals(self.name, summary, "num_extracted", run=totals)
