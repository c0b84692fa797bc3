"""Where everything lives under `output_dir`, and the identities that name folders and requests.

One module knows the run folder's layout, so that stages, training, evaluation, `run` and `status` ask here
instead of joining paths themselves:

    _layout.json                               the layout version (checked before anything is read)
    _lease.json                                who is writing here now (lease.py)
    config.yaml  run.json                      the resolved config; the last invocation's state
    documents/p=<k>/                           documents, partitioned by doc_id (partitions.py)
    documents/_files/<file id>.json            one input file (url, size, version) ingested
    entities/<extraction id>/p=<k>/            one extraction identity's entities, partitioned
    synthetic/<synthesis id>/p=<k>/            one synthesis identity's rows, partitioned
    <partitioned stage>/_manifest/             sealed partitions and the stage summary
    errors/<stage>/...                         failed and rejected rows, beside each stage's layout
    judged/<judge id>/                         a judge model's ratings (curate.judge)
    curated/<curation id>/                     the curated corpus (curate.enabled)
    train/blocks/<source>/                     packed training blocks, shared by every training
    <train.name>/                              one training: checkpoints, metrics, exported model
    eval/                                      the evaluation report
    _steps/<step>.json                         `run` / `sweep` / `ablate` step markers

Identity functions are pure: they take the resolved facts (prompt versions, whether decoding is
constrained) rather than loading them, so they cost nothing and never import an engine.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Any

from ray_entigraph import schema, storage
from ray_entigraph.config import CurateConfig, EntiGraphConfig
from ray_entigraph.errors import LayoutVersionError
from ray_entigraph.partitions import PartitionedStore
from ray_entigraph.text.identity import request_key
from ray_entigraph.version import __version__

# The storage layout this version reads and writes. 2: 128-bit doc and request ids, shard names and request
# keys of layout 1 (60-bit) do not match any more; input-file identity in documents markers; synthesis
# identity in synthetic markers. Bump it whenever a reader of this version would misread an older folder.
LAYOUT_VERSION = 2
LAYOUT_FILE = "_layout.json"
LEASE_FILE = "_lease.json"
CONFIG_FILE = "config.yaml"
RUN_STATE_FILE = "run.json"
STEPS_DIR = "_steps"
EVAL_DIR = "eval"
EXTRACT_KIND = "extract"


def _short_hash(blob: dict) -> str:
    return hashlib.blake2b(json.dumps(blob, sort_keys=True).encode(), digest_size=8).hexdigest()


def shard_basename(url: str) -> str:
    """A shard's name from its URL (`.../part-ab12.parquet` -> `part-ab12`)."""
    return posixpath.basename(str(url)).removesuffix(".parquet")


# -- identities ------------------------------------------------------------------------------------------


def extraction_key(config: EntiGraphConfig, doc_id: str, *, prompt_version: str, constrained: bool) -> str:
    """The request key of one document's entity extraction: everything that determines its output."""
    x = config.extract
    return request_key(
        doc_id=doc_id, kind=EXTRACT_KIND, entities=(), prompt_version=prompt_version, model=config.model.name,
        sampling={**x.sampling.key(), "max_attempts": x.max_attempts, "fallback": x.fallback,
                  "max_entities": x.max_entities, **({"json_schema": True} if constrained else {}),
                  **({"source": x.source} if x.source != "model" else {})},
        seed=config.seed,
    )


def extraction_id(config: EntiGraphConfig, *, prompt_version: str, constrained: bool) -> str:
    """Names the entities/ folder: everything in an extraction's request key except the document."""
    x = config.extract
    return _short_hash({"model": config.model.name, "prompts": prompt_version, "seed": config.seed,
                        "sampling": x.sampling.key(), "max_attempts": x.max_attempts, "fallback": x.fallback,
                        "max_entities": x.max_entities, "min_entities": x.min_entities,
                        "grounded": x.require_entities_in_document, "constrained": constrained,
                        **({"source": x.source} if x.source != "model" else {})})


def synthesis_id(config: EntiGraphConfig, *, prompt_version: str, extraction: str | None) -> str:
    """Names the synthetic/ folder: what determines a synthetic row's text besides its document and entities
    (model, prompt version, sampling, seed, augmenter, and the extraction its entities came from). Rows of
    another identity stay in their own folder, never read with these."""
    rewrite = {"rewrite": config.rewrite.key()} if config.synthesis.augmenter == "rewrite" else {}
    return _short_hash({"model": config.model.name, "prompts": prompt_version, "seed": config.seed,
                        "sampling": config.synthesis.sampling.key(), "augmenter": config.synthesis.augmenter,
                        "extraction": extraction, **rewrite})  # (rewrite: its budgets change the texts)


def stage_identity(*parts: object) -> str:
    """A sealed partition's identity: what the stage's output of a partition depends on (the stage above's
    identity and this stage's settings)."""
    return _short_hash({"parts": [p for p in parts]})


def judge_id(*, model: str, prompt_version: str, constrained: bool, sampling: dict) -> str:
    """Names the judged/ folder: another judge model, prompt or decoding never reuses these ratings."""
    return _short_hash({"model": model, "prompts": prompt_version, "constrained": constrained, "sampling": sampling})


def curation_id(curate: CurateConfig, synthetic_identity: str) -> str:
    """Names the curated/ folder: the curate settings and the synthetic corpus (its stage identity) they read."""
    return _short_hash({"curate": curate.identity(), "synthetic": synthetic_identity})


def step_name(step: str) -> str:
    return step.replace("/", "-")


# -- the folder ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """The run folder of one `output_dir`. `fence`: the lease fence (lease.py) that every commit through
    this layout's stores checks first; None for readers."""

    output_dir: str
    fence: Any = None
    num_partitions: int = 0  # 0: as recorded in the folder's _layout.json

    def url(self, *parts: str) -> str:
        return storage.join(self.output_dir, *parts)

    @property
    def layout_url(self) -> str:
        return self.url(LAYOUT_FILE)

    @property
    def lease_url(self) -> str:
        return self.url(LEASE_FILE)

    def recorded(self) -> dict:
        return json.loads(storage.read_text(self.layout_url)) if storage.exists(self.layout_url) else {}

    @property
    def partitions(self) -> int:
        """The folder's partition count: the one given, else the one recorded."""
        if self.num_partitions:
            return self.num_partitions
        return int(self.recorded().get("num_partitions") or 0)

    def layout_version(self) -> int | None:
        """The folder's layout version: its _layout.json; 1 for a run folder from before versions were
        recorded; None for an empty or new folder."""
        if storage.exists(self.layout_url):
            return int(json.loads(storage.read_text(self.layout_url)).get("layout_version", 0))
        older = (self.config_url, self.run_state_url, self.url(schema.INGEST, storage.COMMITTED))
        return 1 if any(storage.exists(u) for u in older) else None

    def check_version(self, *, create: bool = False) -> None:
        """Refuse a folder of another layout version with what to do; with `create`, record ours in a new
        folder (before anything else is written there)."""
        found = self.layout_version()
        if found is None:
            if create:
                storage.write_text(self.layout_url, json.dumps({"layout_version": LAYOUT_VERSION,
                                                                "num_partitions": self.num_partitions}))
            return
        if found != LAYOUT_VERSION:
            raise LayoutVersionError(
                f"output_dir {self.output_dir!r} has storage layout version {found}; ray_entigraph {__version__} "
                f"reads and writes layout {LAYOUT_VERSION} ({LAYOUT_FILE}). Fix: set output_dir to a new folder "
                "(the old one stays readable by the version that wrote it), or delete it to start over.")
        recorded = int(self.recorded().get("num_partitions") or 0)
        if self.num_partitions and recorded and recorded != self.num_partitions:
            raise LayoutVersionError(
                f"output_dir {self.output_dir!r} is split into {recorded} partitions (its {LAYOUT_FILE}), but "
                f"num_partitions is {self.num_partitions}. Fix: set num_partitions={recorded}, or use a new "
                "output_dir.")

    @property
    def config_url(self) -> str:
        return self.url(CONFIG_FILE)

    def saved_config(self) -> EntiGraphConfig | None:
        """The resolved config the run saved here (config.yaml), or None when there is none; a config this
        version cannot read raises pydantic's ValidationError."""
        import yaml

        if not storage.exists(self.config_url):
            return None
        return EntiGraphConfig.model_validate(yaml.safe_load(storage.read_text(self.config_url)) or {})

    @property
    def run_state_url(self) -> str:
        return self.url(RUN_STATE_FILE)

    def step_marker_url(self, step: str) -> str:
        return self.url(STEPS_DIR, step_name(step) + ".json")

    def store(self, stage: str) -> storage.StageStore:
        return storage.StageStore(self.output_dir, stage, fence=self.fence)

    def partitioned(self, stage: str) -> PartitionedStore:
        return PartitionedStore(self.output_dir, stage, self.partitions, fence=self.fence)

    @property
    def documents(self) -> PartitionedStore:
        return self.partitioned(schema.INGEST)

    def files_url(self, *parts: str) -> str:
        """documents/_files/: one marker per ingested input file."""
        return self.url(schema.INGEST, "_files", *parts)

    def entities(self, extraction: str) -> PartitionedStore:
        return self.partitioned(f"{schema.EXTRACT}/{extraction}")

    def synthetic(self, synthesis: str) -> PartitionedStore:
        return self.partitioned(f"{schema.SYNTHESIZE}/{synthesis}")

    @staticmethod
    def judged_stage(judge: str) -> str:
        return f"{schema.JUDGE}/{judge}"

    @staticmethod
    def curated_stage(curation: str) -> str:
        return f"{schema.CURATE}/{curation}"

    def blocks(self, source: str) -> storage.StageStore:
        return self.store(schema.blocks_stage(source))

    def training(self, name: str, *parts: str) -> str:
        """One training's folder (output_dir/<train.name>), or a path inside it."""
        return self.url(*name.split("/"), *parts)

    def eval_url(self, *parts: str) -> str:
        return self.url(EVAL_DIR, *parts)

    def stage_folders(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Every stage folder `status` reports, by stage name: documents, plus the run's entities/<id>,
        synthetic/<id>, judged/<id> and curated/<id> folders (`extra`, recorded in run.json by the run that
        resolved them, or named by its config)."""
        return {schema.INGEST: schema.INGEST, **(extra or {})}


def train_url(config: EntiGraphConfig, *parts: str) -> str:
    """The configured training's folder (output_dir/<train.name>), or a path inside it."""
    return Layout(config.output_dir).training(config.train.name, *parts)


def base_model_name(config: EntiGraphConfig) -> str:
    """The model continued pretraining starts from (train.base_model, else the generator)."""
    return config.train.base_model or config.model.name
