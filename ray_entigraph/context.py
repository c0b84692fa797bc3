"""The run context: what a run is, resolved once on the driver and handed to every stage.

`RunContext.resolve(config)` lists the input files, loads the prompt sets, decides whether extraction and
the judge decode under a JSON schema, and names every stage folder. Everything it checks fails here, before
Ray or a model starts. Stages receive the context explicitly; actors receive the typed pieces they need
(config, prompt set), built once per actor, never per row.

The context holds references (files, folders, prompt sets) and identities, never per-document data: stages
plan and read on the workers, partition by partition (partitions.py). The stage identities name what each
stage's sealed partitions were computed from, so a resume with nothing new to do reads one summary per stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

from ray_entigraph import schema, storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.corpus import Corpus
from ray_entigraph.engines import constrains_json
from ray_entigraph.engines.hf import document_tokenizer_name
from ray_entigraph.errors import PromptError
from ray_entigraph.inputs import list_input_files, splittable
from ray_entigraph.layout import (
    Layout,
    curation_id,
    extraction_id,
    extraction_key,
    judge_id,
    stage_identity,
    synthesis_id,
)
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
    _file_ids: list[tuple[str, str, str]] | None = field(default=None, repr=False)
    _file_sizes: dict[str, int] = field(default_factory=dict, repr=False)

    @classmethod
    def resolve(cls, config: EntiGraphConfig, *, list_inputs: bool = True) -> "RunContext":
        """Check and resolve everything a run needs from its config; raises a user error naming the fix."""
        files = list_input_files(config.input) if list_inputs else []
        prompts = load_prompt_set(config.synthesis.prompts)
        judging = config.curate.enabled and config.curate.judge
        judge_prompts = load_prompt_set(config.curate.judge_prompts) if judging else None
        ctx = cls(config=config, layout=Layout(config.output_dir, num_partitions=config.num_partitions),
                  input_files=files, prompts=prompts,
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
            unknown = [f.name for f in self.config.rewrite.formats if f.name not in p.rephrase]
            if self.config.synthesis.augmenter == "rewrite" and p.rephrase and unknown:
                raise PromptError(f"rewrite.formats names {', '.join(map(repr, unknown))}, which prompt set {name!r} "
                                  f"does not have (it has {', '.join(p.rephrase)}). Fix: use those names, or add "
                                  "the templates to the prompt set's `rephrase` section.")
        if missing:
            raise PromptError(f"Prompt set {name!r} has no {', '.join(missing)} template(s), which "
                              f"synthesis.augmenter={self.config.synthesis.augmenter} needs. Fix: add them, or set "
                              "synthesis.prompts to a built-in set.")
        stand_ins = {"extract": EXTRACT_VALUES, "pair": relation_values("Title", "Document.", ["A", "B"]),
                     "triplet": relation_values("Title", "Document.", ["A", "B", "C"])}
        if p.qa_every:
            if p.relation_qa is None:
                raise PromptError(f"Prompt set {name!r} sets qa_every={p.qa_every} but has no relation_qa template. "
                                  "Fix: add one, or set qa_every: 0.")
            for entities in (["A", "B"], ["A", "B", "C"]):  # it writes pairs and triplets alike
                check_renders(name, "relation_qa", p.relation_qa, relation_values("Title", "Document.", entities))
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
        """A hash of the input files as they are now (names, sizes, versions) and of how they are read: an
        edited or added file changes it. One metadata request per file, once per run."""
        blob = json.dumps(sorted(fid for _, _, fid in self.file_ids()), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def file_ids(self) -> list[tuple[str, str, str]]:
        """(url, format, file id) of every input file: the id hashes the file's identity (url, size, version:
        mtime or ETag) and the settings that turn it into documents, and names its ingest marker."""
        if self._file_ids is None:
            c = self.config
            # what turns a file into documents: not how the work is cut up or where it runs (a file read in other
            # byte ranges gives the same documents; their shards share the file's id, and readers keep each
            # document once), so a run folder keeps its identities when those settings change
            ingest = c.ingest.model_dump(mode="json", exclude={"bytes_per_task", "files_per_task"})
            reading = {"ingest": ingest, "tokenizer": document_tokenizer_name(c),
                       "fields": [c.input.text_field, c.input.title_field, c.input.format],
                       **({"where": c.input.where} if c.input.where else {})}  # (absent: older folders keep ids)
            self._file_ids = []
            self._file_sizes = {}
            for url, fmt in self.input_files:
                identity = storage.file_identity(url)
                blob = json.dumps({"file": identity, "reading": reading}, sort_keys=True)
                fid = "f" + hashlib.sha256(blob.encode()).hexdigest()[:32]
                self._file_ids.append((url, fmt, fid))
                self._file_sizes[fid] = int(identity[1] or 0)
        return self._file_ids

    def file_sizes(self) -> list[tuple[str, str, int]]:
        """(url, format, size in bytes) of every input file, in listing order."""
        return [(url, fmt, self._file_sizes[fid]) for url, fmt, fid in self.file_ids()]

    def ingest_units(self) -> list[dict]:
        """The units of ingest work, each {"marker", "members"}: a JSON Lines or Parquet file larger than
        ingest.bytes_per_task is one unit per byte range of it (member `piece` i of `pieces`, bytes [start,
        end)); smaller files are grouped, about ingest.files_per_task per unit, never over bytes_per_task. A
        group ends after a file whose URL hash says so, so adding a file regroups only its neighbours.
        `marker` names the unit's commit marker under documents/_files/: the file id for a lone whole file."""
        per_task, group_size = self.config.ingest.bytes_per_task, self.config.ingest.files_per_task
        units: list[dict] = []
        group: list[dict] = []
        group_bytes = 0

        def close() -> None:
            nonlocal group, group_bytes
            if group:
                marker = group[0]["file_id"] if len(group) == 1 else "g" + hashlib.sha256(
                    ",".join(m["file_id"] for m in group).encode()).hexdigest()[:32]
                units.append({"marker": marker, "members": group})
            group, group_bytes = [], 0

        for url, fmt, fid in self.file_ids():
            size = self._file_sizes[fid]
            if splittable(url, fmt) and size > per_task:
                pieces = -(-size // per_task)
                units += [{"marker": f"{fid}.{i}-of-{pieces}", "members": [
                    {"path": url, "format": fmt, "file_id": fid, "piece": i, "pieces": pieces,
                     "start": size * i // pieces, "end": size * (i + 1) // pieces}]} for i in range(pieces)]
                continue
            if group and group_bytes + size > per_task:
                close()
            group.append({"path": url, "format": fmt, "file_id": fid, "piece": 0, "pieces": 1, "start": 0,
                          "end": size})
            group_bytes += size
            if (int(hashlib.sha256(url.encode()).hexdigest()[:8], 16) % group_size == group_size - 1
                    or len(group) >= 4 * group_size):
                close()
        close()
        return units

    @property
    def documents_identity(self) -> str:
        """What the documents partitions hold: the current input files, read this way, capped so."""
        return stage_identity(schema.INGEST, self.input_identity(), self.config.input.max_documents)

    @property
    def extraction_id(self) -> str:
        return extraction_id(self.config, prompt_version=self.prompts.version, constrained=self.constrained_extraction)

    @property
    def entities_identity(self) -> str:
        return stage_identity(schema.EXTRACT, self.documents_identity, self.extraction_id)

    @property
    def synthesis_id(self) -> str:
        entigraph = self.config.synthesis.augmenter == "entigraph"
        return synthesis_id(self.config, prompt_version=self.prompts.version,
                            extraction=self.extraction_id if entigraph else None)

    @property
    def synthetic_identity(self) -> str:
        """What the synthetic partitions hold: the entities (or documents) above, this synthesis, this plan."""
        entigraph = self.config.synthesis.augmenter == "entigraph"
        upstream = self.entities_identity if entigraph else self.documents_identity
        plan = self.config.plan.model_dump(mode="json")
        plan.pop("tasks_per_group")  # how requests are grouped does not change which rows exist
        return stage_identity(schema.SYNTHESIZE, upstream, self.synthesis_id, plan,
                              sorted(self.prompts.rephrase) if not entigraph else None)

    @property
    def entities_store(self):
        return self.layout.entities(self.extraction_id)

    @property
    def synthetic_store(self):
        return self.layout.synthetic(self.synthesis_id)

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
        """The curated/<id> folder for the current curate settings and synthetic corpus."""
        return Layout.curated_stage(curation_id(self.config.curate, self.synthetic_identity))

    # -- documents ----------------------------------------------------------------------------------------

    def corpus(self):
        """The picklable description of the current corpus that workers read partitions with (corpus.py)."""
        return Corpus(config=self.config, prompts=self.prompts, constrained_extraction=self.constrained_extraction,
                      documents=self.layout.documents, documents_identity=self.documents_identity,
                      entities=self.entities_store, entities_identity=self.entities_identity,
                      synthetic=self.synthetic_store, synthetic_identity=self.synthetic_identity).with_summaries()

