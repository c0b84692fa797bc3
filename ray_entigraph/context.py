"""The run context: what a run is, resolved once on the driver and handed to every stage.

`RunContext.resolve(config)` lists the input files, loads the prompt sets, decides whether extraction and
the judge decode under a JSON schema, and names every stage folder. Everything it checks fails here, before
Ray or a model starts. Stages receive the context explicitly; actors receive the typed pieces they need
(config, prompt set), built once per actor, never per row.

The context holds references (files, folders, prompt sets), not per-document data. The one exception is the
document index (doc_id -> documents shard), built once per run after ingest; a later version keeps it on
the workers, partitioned by doc_id.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

from ray_entigraph import schema, storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.engines import constrains_json
from ray_entigraph.errors import PromptError
from ray_entigraph.inputs import list_input_files
from ray_entigraph.layout import Layout, curation_id, extraction_key, judge_id
from ray_entigraph.prompts import (
    EXTRACT_VALUES,
    JUDGE_VALUES,
    ChatTemplate,
    PromptSet,
    check_renders,
    load_prompt_set,
    relation_values,
)

logger = logging.getLogger(__name__)

# Greedy: a rating is a judgment, not a sample. A few tokens leave room for "4/5" or `{"rating": 4}`.
JUDGE_SAMPLING_FIELDS = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 12, "repetition_penalty": 1.0}


def judge_config(config: EntiGraphConfig) -> EntiGraphConfig:
    """The config a judge actor runs: the generator's engine settings with the judge's model."""
    if not config.curate.judge_model:
        return config
    return config.model_copy(update={"model": config.model.model_copy(update={"name": config.curate.judge_model})})


@dataclass
class RunContext:
    """One run's resolved facts. Build it with `RunContext.resolve(config)`."""

    config: EntiGraphConfig
    layout: Layout
    input_files: list[tuple[str, str]]  # (url, format) of every input file
    prompts: PromptSet  # synthesis.prompts
    judge_prompts: PromptSet | None  # curate.judge_prompts, when the judge runs
    constrained_extraction: bool  # extraction decodes under a JSON schema (part of its request key)
    constrained_judge: bool
    _documents: dict[str, str] | None = field(default=None, repr=False)

    @classmethod
    def resolve(cls, config: EntiGraphConfig, *, list_inputs: bool = True) -> "RunContext":
        """Check and resolve everything a run needs from its config; raises a user error naming the fix."""
        files = list_input_files(config.input) if list_inputs else []
        prompts = load_prompt_set(config.synthesis.prompts)
        judging = config.curate.enabled and config.curate.judge
        judge_prompts = load_prompt_set(config.curate.judge_prompts) if judging else None
        ctx = cls(config=config, layout=Layout(config.output_dir), input_files=files, prompts=prompts,
                  judge_prompts=judge_prompts, constrained_extraction=constrains_json(config),
                  constrained_judge=constrains_json(judge_config(config)))
        ctx.required_templates()
        return ctx

    # -- prompt templates ---------------------------------------------------------------------------------

    def required_templates(self) -> None:
        """The templates this run's stages use exist and render (a missing template or a misspelt placeholder
        fails here, before any actor starts)."""
        p, name = self.prompts, self.config.synthesis.prompts
        if self.config.synthesis.augmenter == "entigraph":
            missing = [k for k in ("extract", "pair") if getattr(p, k) is None]
            if self.config.plan.max_triplets_per_doc and p.triplet is None:
                missing.append("triplet")
        else:
            missing = [] if p.rephrase else ["rephrase"]
        if missing:
            raise PromptError(f"Prompt set {name!r} has no {', '.join(missing)} template(s), which "
                              f"synthesis.augmenter={self.config.synthesis.augmenter} needs. Fix: add them, or set "
                              "synthesis.prompts to a built-in set.")
        stand_ins = {"extract": EXTRACT_VALUES, "pair": relation_values("Title", "Document.", ["A", "B"]),
                     "triplet": relation_values("Title", "Document.", ["A", "B", "C"])}
        for kind, values in stand_ins.items():
            template = getattr(p, kind)
            if template is not None:
                check_renders(name, kind, template, values)
        for style, template in p.rephrase.items():
            check_renders(name, f"rephrase.{style}", template, relation_values("Title", "Document.", []))
        if self.judge_prompts is not None:
            check_renders(self.config.curate.judge_prompts, "judge", self.judge_template(), JUDGE_VALUES)

    def judge_template(self) -> ChatTemplate:
        if self.judge_prompts is None or self.judge_prompts.judge is None:
            raise PromptError(f"Prompt set {self.config.curate.judge_prompts!r} has no `judge` template. Fix: set "
                              "curate.judge_prompts to judge-v1 or to a YAML file with a `judge` section.")
        return self.judge_prompts.judge

    # -- identities and folders ---------------------------------------------------------------------------

    def input_identity(self) -> str:
        """A hash of the input files as they are now (names, sizes, versions): an edited or added file
        changes it. One metadata request per file."""
        blob = json.dumps([storage.file_identity(url) for url, _ in self.input_files], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def extraction_key(self, doc_id: str) -> str:
        return extraction_key(self.config, doc_id, prompt_version=self.prompts.version,
                              constrained=self.constrained_extraction)

    @property
    def judge_config(self) -> EntiGraphConfig:
        return judge_config(self.config)

    @property
    def judge_stage(self) -> str:
        """The judged/<id> folder of the configured judge."""
        version = self.judge_prompts.version if self.judge_prompts else load_prompt_set(
            self.config.curate.judge_prompts).version
        return Layout.judged_stage(judge_id(model=self.judge_config.model.name, prompt_version=version,
                                            constrained=self.constrained_judge, sampling=JUDGE_SAMPLING_FIELDS))

    def curated_stage(self) -> str:
        """The curated/<id> folder for the current curate settings and the synthetic shards committed now
        (read from storage each call: synthesis adds shards)."""
        shards = [e["shard"] for e in self.layout.synthetic.manifest_entries() if e.get("rows", 0) > 0]
        return Layout.curated_stage(curation_id(self.config.curate, shards))

    def training_corpus_stage(self) -> str:
        """The stage whose rows training reads as the synthetic corpus: the curated copy when curate is on."""
        return self.curated_stage() if self.config.curate.enabled else schema.SYNTHESIZE

    # -- documents ----------------------------------------------------------------------------------------

    def documents(self) -> dict[str, str]:
        """doc_id -> the committed documents shard to read it from, for the *current* input files only (an
        output_dir reused with other inputs keeps its old documents out), each document once (the same text
        in two files is one document), capped at input.max_documents. Built once; `refresh_documents` after
        ingest commits more."""
        if self._documents is None:
            self._documents = self._index_documents()
        return self._documents

    def refresh_documents(self) -> None:
        self._documents = None

    def _index_documents(self) -> dict[str, str]:
        current = {url for url, _ in self.input_files}
        store = self.layout.documents
        index: dict[str, str] = {}
        for entry in store.manifest_entries():
            if entry.get("source") not in current or not entry.get("rows"):
                continue
            url = storage.join(store.url, entry["file"])
            for doc_id in storage.read_parquet(url, ["doc_id"]).column("doc_id").to_pylist():
                index.setdefault(doc_id, url)
        doc_ids = sorted(index)
        if self.config.input.max_documents is not None:
            doc_ids = doc_ids[: self.config.input.max_documents]
        return {d: index[d] for d in doc_ids}

    def document_shards(self) -> list[str]:
        return sorted(set(self.documents().values()))

