"""The Python API: every command of the CLI as a function, and the committed corpus as a dataset.

    import ray_entigraph as eg

    config = eg.load_config("demo", ["output_dir=/tmp/run"])   # a preset, or a YAML file, plus overrides
    eg.synthesize(config)                                      # ingest -> extract -> plan -> synthesize
    eg.train(config)                                           # continued pretraining with replay (Ray Train)
    report = eg.evaluate(config)                               # closed-book QA and perplexity
    ds = eg.load_corpus("/tmp/run")                            # a datasets.Dataset of the current rows

Every step function takes a config (an `EntiGraphConfig`, a preset name or a YAML path, with optional dotted
overrides) and is the same resumable step the CLI runs: calling it again continues from committed work.
`load_corpus` reads through the same current-identity reader training uses (corpus.py): only the rows of the
config the run folder holds now, each once; shards of older configs, uncommitted shards and failed rows are
left out.
"""

from __future__ import annotations

from pathlib import Path

from ray_entigraph.config import EntiGraphConfig, as_config
from ray_entigraph.config import load_config as _load_config
from ray_entigraph.errors import ConfigError, EntiGraphError

__all__ = ["CORPUS_STAGES", "ablate", "evaluate", "load_config", "load_corpus", "run", "run_config", "sweep",
           "synthesize", "train"]

CORPUS_STAGES = ("documents", "entities", "synthetic", "curated")


def load_config(config: str | Path | None = "demo", overrides: list[str] | None = None) -> EntiGraphConfig:
    """A config from a preset installed with the package (`demo`, `demo-gpu`, `knowledge`,
    `paper-llama3-8b`), a YAML file (with its `extends:` chain), or `None` for the built-in defaults; then
    dotted overrides (`["output_dir=/tmp/run", "plan.max_pairs_per_doc=4"]`)."""
    return _load_config(config, overrides)


def _config(config: EntiGraphConfig | str | Path | None, overrides: list[str] | None) -> EntiGraphConfig:
    from ray_entigraph import storage

    config = as_config(config, overrides)
    storage.configure(config.storage.settings())
    return config


def synthesize(config: EntiGraphConfig | str | Path = "demo", overrides: list[str] | None = None):
    """Ingest, extract entities, plan and synthesize (and curate, when enabled); returns the summary."""
    from ray_entigraph.pipeline import synthesize as _synthesize

    return _synthesize(_config(config, overrides))


def train(config: EntiGraphConfig | str | Path = "demo", overrides: list[str] | None = None):
    """Pack, mix with replay and train with Ray Train; exports a Hugging Face model. Returns the summary."""
    from ray_entigraph.train.launch import run_train

    return run_train(_config(config, overrides))


def evaluate(config: EntiGraphConfig | str | Path = "demo", overrides: list[str] | None = None):
    """Closed-book QA with cluster intervals and perplexity for the base and trained models; returns the
    summary (its `report` holds the report written to <output_dir>/eval/report.json)."""
    from ray_entigraph.eval.launch import run_eval

    return run_eval(_config(config, overrides))


def run(config: EntiGraphConfig | str | Path = "demo", overrides: list[str] | None = None,
        until: str | None = None) -> dict[str, dict]:
    """synthesize -> train -> eval, each step skipped when its marker says it is done."""
    from ray_entigraph.workflows import run as _run

    return _run(_config(config, overrides), until=until)


def sweep(config: EntiGraphConfig | str | Path = "demo", overrides: list[str] | None = None):
    """The paper's experiment: accuracy against synthetic tokens, with the Raw CPT and Rephrase baselines."""
    from ray_entigraph.workflows import sweep as _sweep

    return _sweep(_config(config, overrides))


def ablate(config: EntiGraphConfig | str | Path = "demo", overrides: list[str] | None = None):
    """Synthesis variants and filters at equal tokens and steps, with Raw CPT as the positive control."""
    from ray_entigraph.workflows import ablate as _ablate

    return _ablate(_config(config, overrides))


# -- the committed corpus ------------------------------------------------------------------------------------


def run_config(output_dir: str) -> EntiGraphConfig:
    """The resolved config a run folder holds (<output_dir>/config.yaml, written by every command)."""
    from ray_entigraph import storage
    from ray_entigraph.layout import Layout

    layout = Layout(output_dir)
    config = layout.saved_config()
    if config is None:
        raise EntiGraphError(f"{output_dir!r} holds no run: {layout.config_url} does not exist. Fix: pass the "
                             "output_dir of a run (`ray-entigraph synthesize` writes it), or a config with "
                             "load_corpus(config=...).")
    storage.configure(config.storage.settings())
    return config


def corpus_reader(config: EntiGraphConfig):
    """(Corpus, curated store or None): what `load_corpus` and `export` read, resolved once on the driver."""
    from ray_entigraph.context import RunContext

    ctx = RunContext.resolve(config)
    ctx.layout.check_version()
    curated = ctx.layout.store(ctx.curated_stage()) if config.curate.enabled else None
    return ctx.corpus(), curated


def partition_rows(corpus, stage: str, p: int, columns: list[str] | None = None) -> list[dict]:
    """One partition's current rows of a partitioned stage (documents, entities, synthetic)."""
    from ray_entigraph.corpus import read_documents, read_entities, read_synthetic

    wanted = None if columns is None else sorted({*columns, "error", "text"})  # what the filters below read
    if stage == "documents":
        rows = [r for r in read_documents(corpus, p, wanted) if not r.get("error")]
    elif stage == "entities":
        rows = read_entities(corpus, p)
    else:
        rows = [r for r in read_synthetic(corpus, p, wanted) if not r.get("error") and r.get("text")]
    return rows if columns is None else [{c: r.get(c) for c in columns} for r in rows]


def _stage_schema(stage: str):
    from ray_entigraph import schema

    return {"documents": schema.DOCUMENTS, "entities": schema.ENTITIES, "synthetic": schema.SYNTHETIC,
            "curated": schema.CURATED}[stage]


def iter_tables(output_dir: str | None = None, stage: str = "synthetic", *, config: EntiGraphConfig | None = None,
                columns: list[str] | None = None, reader=None):
    """Yield (partition, Arrow table) with the current rows of a stage, one partition at a time (partition is
    None for the curated copy's shards): the reader behind `load_corpus` and `export`. `reader`: the
    (corpus, curated) pair of `corpus_reader`, when the caller resolved it already."""
    from ray_entigraph import schema, storage

    if stage not in CORPUS_STAGES:
        raise ConfigError(f"stage={stage!r} is not a corpus stage. Fix: use one of {', '.join(CORPUS_STAGES)}.")
    config = config or run_config(output_dir)
    corpus, curated = reader or corpus_reader(config)
    full = _stage_schema(stage)
    out_schema = full if columns is None else schema.pa.schema([full.field(c) for c in columns])
    if stage == "curated":
        if curated is None:
            raise ConfigError("stage='curated' needs curate.enabled=true in the run's config. Fix: read "
                              "stage='synthetic', or curate the run first.")
        for entry in curated.manifest_entries():
            if entry.get("rows", 0) > 0:
                yield None, storage.read_parquet(storage.join(curated.url, entry["file"]), columns)
        return
    for p in range(corpus.num_partitions):
        rows = partition_rows(corpus, stage, p, columns)
        if rows:
            yield p, schema.rows_to_table(rows, out_schema)


def load_corpus(output_dir: str | None = None, stage: str = "synthetic", *, format: str = "datasets",
                config: EntiGraphConfig | str | Path | None = None, columns: list[str] | None = None):
    """The current config's committed rows of one stage as a `datasets.Dataset` (format="datasets"), a
    `ray.data.Dataset` read partition by partition on the workers (format="ray"), or a `pyarrow.Table`
    (format="arrow").

    stage: documents | entities | synthetic (default) | curated. The config is the one saved in output_dir
    unless given. Only rows of that config's identities are returned, each once: shards written under other
    prompt versions, models, sampling settings or budgets, uncommitted shards and failed rows are not."""
    if format not in ("datasets", "ray", "arrow"):
        raise ConfigError(f"format={format!r} is not supported. Fix: use 'datasets', 'ray' or 'arrow'.")
    if config is not None and not isinstance(config, EntiGraphConfig):
        config = _config(config, [f"output_dir={output_dir}"] if output_dir else None)
    config = config or run_config(output_dir)
    if format == "ray" and stage != "curated":
        return _ray_dataset(config, stage, columns)
    import pyarrow as pa

    tables = [t for _, t in iter_tables(stage=stage, config=config, columns=columns)]
    table = pa.concat_tables(tables) if tables else _stage_schema(stage).empty_table()
    if columns is not None and not tables:
        table = table.select(columns)
    if format == "arrow":
        return table
    if format == "ray":  # the curated copy: its shards are not partitioned, read here and handed to Ray Data
        import ray

        return ray.data.from_arrow(table)
    import datasets

    return datasets.Dataset(table)


def _read_partition(row: dict, *, corpus, stage: str, columns: list[str] | None) -> list[dict]:
    return partition_rows(corpus, stage, int(row["partition"]), columns)


def _ray_dataset(config: EntiGraphConfig, stage: str, columns: list[str] | None):
    import ray

    from ray_entigraph.runtime import init_ray

    init_ray(config)
    corpus, _ = corpus_reader(config)
    parts = ray.data.from_items([{"partition": p} for p in range(corpus.num_partitions)])
    return parts.flat_map(_read_partition, fn_kwargs={"corpus": corpus, "stage": stage, "columns": columns})
