"""`ray-entigraph export`: the current corpus as clean Parquet with a dataset card, the trained model with a
model card, and an optional push of exactly those folders to the Hugging Face Hub. (The module is not named
export.py so that `ray_entigraph.export` stays the API function: a submodule would shadow it.)

    <to>/dataset/README.md                  the dataset card (YAML header that `datasets` reads, then prose)
    <to>/dataset/data/train-p<k>.parquet    the current rows of partition k, with a grounding score per row
    <to>/model/                             the exported model (config, weights, tokenizer) and its README.md
    <to>/export.json                        what was written: counts, identities, the card's figures

The corpus is read through the current-identity reader (api.iter_tables), one partition at a time: rows of
older configs, uncommitted shards and failed rows are never exported. `--push-to-hub ORG/NAME` uploads
<to>/dataset as written (and `--push-model-to-hub ORG/NAME` uploads <to>/model) with `huggingface_hub`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from ray_entigraph import storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.errors import ConfigError, EntiGraphError
from ray_entigraph.version import __version__

# The columns of the exported synthetic corpus, in order ("grounding" is computed at export).
COLUMNS = ["text", "doc_id", "title", "kind", "entities", "task_id", "model", "prompt_version", "sampling_json",
           "seed", "num_generated_tokens", "finish_reason"]


@dataclass
class ExportSummary:
    to: str
    dataset_dir: str
    model_dir: str | None
    num_rows: int
    num_documents: int
    generated_tokens: int
    mean_grounding: float | None
    files: list[str] = field(default_factory=list)
    pushed: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        g = "-" if self.mean_grounding is None else f"{self.mean_grounding:.3f}"
        out = [f"rows             {self.num_rows:,} from {self.num_documents:,} documents, "
               f"{self.generated_tokens:,} generated tokens, mean grounding {g}",
               f"dataset          {self.dataset_dir} ({len(self.files)} Parquet files + README.md)"]
        if self.model_dir:
            out.append(f"model            {self.model_dir} (with README.md)")
        out += [f"pushed           https://huggingface.co/{kind}s/{repo}" if kind == "dataset"
                else f"pushed           https://huggingface.co/{repo}" for kind, repo in self.pushed.items()]
        return out


def _with_grounding(table, corpus, p: int):
    """The partition's rows with a `grounding` column: the weighted share of each text's entities, numbers
    and words found in its source document (text/grounding.py, as `curate` scores them)."""
    import pyarrow as pa

    from ray_entigraph.corpus import documents_by_id
    from ray_entigraph.stages.curate import forced_prefix
    from ray_entigraph.text.grounding import DocumentIndex, score_text

    docs = documents_by_id(corpus, p)
    indexes: dict[str, DocumentIndex] = {}
    scores = []
    for row in table.select(["doc_id", "title", "kind", "entities", "text"]).to_pylist():
        doc = docs.get(row["doc_id"])
        if doc is None:
            scores.append(None)
            continue
        if row["doc_id"] not in indexes:
            indexes[row["doc_id"]] = DocumentIndex.from_text(doc["text"], title=doc["title"])
        prefix = forced_prefix(corpus.prompts, row)
        scores.append(score_text(row["text"], indexes[row["doc_id"]], skip_prefix=prefix).score)
    return table.append_column("grounding", pa.array(scores, pa.float32()))


def _stats(config: EntiGraphConfig, stage: str, totals: dict, prompts) -> dict:
    g = totals["grounding_sum"] / totals["grounding_rows"] if totals["grounding_rows"] else None
    sampling = config.synthesis.sampling.model_dump(mode="json")
    return {"ray_entigraph_version": __version__, "stage": stage, "generator_model": config.model.name,
            "engine": config.engine.kind, "augmenter": config.synthesis.augmenter,
            "prompt_version": prompts.version, "sampling": sampling, "seed": config.seed,
            "plan": config.plan.model_dump(mode="json"), "curate": config.curate.enabled,
            "input": config.input.path, "num_rows": totals["rows"], "num_documents": len(totals["documents"]),
            "rows_by_kind": dict(sorted(totals["kinds"].items())), "generated_tokens": totals["generated_tokens"],
            "mean_grounding": g, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def fingerprint(corpus, curated=None) -> str:
    """A short hash of what the export holds: the identity and the committed shards it reads. It names the
    data files and the card's `data_files` pattern, so that `datasets`, which caches a local folder by its
    name and that pattern, never serves an earlier export's rows for a new one."""
    import hashlib

    if curated is not None:
        shards = [e.get("sha256") or e["file"] for e in curated.manifest_entries()]
        blob = [corpus.synthetic_identity, "curated", curated.url.rsplit("/", 1)[-1], shards]
    else:
        blob = [corpus.synthetic_identity, corpus.doc_threshold,
                [[e["file"] for e in corpus.synthetic.entries(p, corpus.synthetic_identity)]
                 for p in range(corpus.num_partitions)]]
    return hashlib.sha256(json.dumps(blob, default=str).encode()).hexdigest()[:12]


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "n>10M"


def dataset_card(stats: dict, repo_id: str | None = None) -> str:
    """The dataset card: a YAML header (configs, tags, size) that the Hub and `datasets` read, then how the
    corpus was made and its figures."""
    import yaml

    header = {"tags": ["synthetic", "entigraph", "ray-entigraph", "continued-pretraining"],
              "size_categories": [_size_category(stats["num_rows"])],
              "configs": [{"config_name": "default", "data_files": [
                  {"split": "train", "path": f"data/train-{stats['fingerprint']}-*.parquet"}]}]}
    g = "-" if stats["mean_grounding"] is None else f"{stats['mean_grounding']:.3f}"
    kinds = ", ".join(f"{k}: {v:,}" for k, v in stats["rows_by_kind"].items()) or "-"
    s = stats["sampling"]
    name = repo_id or "this corpus"
    sampling = ", ".join(f"{k} {s.get(k)}" for k in ("temperature", "top_p", "max_new_tokens", "repetition_penalty"))
    body = f"""# {name}

A synthetic corpus made by [EntiGraph](https://arxiv.org/abs/2409.07431) synthetic continued pretraining with
ray_entigraph {stats['ray_entigraph_version']}: the salient entities of each source document were extracted, then
the generator model wrote texts about how pairs and triplets of them relate in that document. It is meant for
continued pretraining of a language model on the source documents' knowledge, mixed with general replay text.

## How it was made

| | |
|---|---|
| generator model | `{stats['generator_model']}` (engine: {stats['engine']}) |
| augmenter | {stats['augmenter']} |
| prompt version | `{stats['prompt_version']}` |
| sampling | {sampling} |
| seed | {stats['seed']} |
| source documents | {stats['num_documents']:,} (input: `{stats['input']}`) |
| curated | {'yes' if stats['curate'] else 'no'} |

## Figures

| | |
|---|---|
| rows | {stats['num_rows']:,} ({kinds}) |
| generated tokens | {stats['generated_tokens']:,} |
| mean grounding | {g} |

`grounding` (a column of every row) is the weighted share of the text's entities, numbers and words that its
source document contains: 1.0 when everything it names is in the document. Small generators invent names and
facts; filter on it (for example `ds.filter(lambda r: r["grounding"] >= 0.5)`) before training.

## Columns

`text` the synthetic text; `doc_id`, `title` its source document; `kind` pair, triplet, summary, qa or
rephrase:<style>; `entities` the entities it was asked about; `task_id` the request key (one row per request);
`model`, `prompt_version`, `sampling_json`, `seed` what wrote it; `num_generated_tokens`, `finish_reason`
(`length` when it hit max_new_tokens); `grounding` as above.

Only the rows of the run's current configuration are here, each once (exported with `ray-entigraph export`).
"""
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + body


def model_card(report: dict | None, stats: dict, base_model: str, repo_id: str | None = None,
               dataset_repo: str | None = None) -> str:
    """The model card: what the model was trained from and on, and the evaluation table of the run."""
    import yaml

    header = {"base_model": base_model, "library_name": "transformers",
              "tags": ["entigraph", "ray-entigraph", "continued-pretraining"],
              **({"datasets": [dataset_repo]} if dataset_repo else {})}
    rows = []
    for r in (report or {}).get("summary", []):
        lo, hi = r.get("accuracy_ci95") or (None, None)
        acc = "-" if r.get("accuracy") is None else f"{100 * r['accuracy']:.1f}%"
        ci = "-" if lo is None else f"[{100 * lo:.1f}, {100 * hi:.1f}]"
        ppl = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        rows.append(f"| {r['label']} | {acc} | {ci} | {r.get('n', '-')} | {ppl(r.get('perplexity_knowledge'))} | "
                    f"{ppl(r.get('perplexity_forgetting'))} |")
    table = ("| model | closed-book accuracy | 95% interval | questions | perplexity on the documents | "
             "perplexity on held-out text |\n|---|---|---|---|---|---|\n" + "\n".join(rows)) if rows else (
        "No evaluation report was found in the run folder (`ray-entigraph eval` writes one).")
    name = repo_id or "this model"
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + f"""---

# {name}

`{base_model}` after continued pretraining on an EntiGraph synthetic corpus of {stats['num_rows']:,} texts
({stats['generated_tokens']:,} generated tokens, generator `{stats['generator_model']}`, prompt version
`{stats['prompt_version']}`) about {stats['num_documents']:,} source documents, with replay text mixed in, made
with ray_entigraph {stats['ray_entigraph_version']}.

## Evaluation

Closed-book multiple-choice questions about the source documents (the intervals are a cluster bootstrap over
documents), perplexity on the documents (what it learned) and on held-out text (what it forgot):

{table}
"""


def export(output_dir: str, to: str, *, stage: str | None = None, push_to_hub: str | None = None,
           push_model_to_hub: str | None = None, private: bool = False, include_model: bool = True,
           token: str | None = None, hub_api=None) -> ExportSummary:
    """Write <to>/dataset (Parquet + card) and, when the run trained a model, <to>/model (model + card);
    then push them when asked. stage: synthetic or curated (default: curated when the run curates); hub_api:
    a `huggingface_hub.HfApi` (default: one made with `token`)."""
    from ray_entigraph import api
    from ray_entigraph.layout import Layout, base_model_name, train_url

    if (push_to_hub or push_model_to_hub) and not storage.is_local(to):
        raise ConfigError(f"--push-to-hub uploads a local folder, and --to {to!r} is not one. Fix: export to a "
                          "local folder to push it.")
    config = api.run_config(output_dir)
    stage = stage or ("curated" if config.curate.enabled else "synthetic")
    if stage not in ("synthetic", "curated"):
        raise ConfigError(f"export stage={stage!r}: only 'synthetic' and 'curated' are exported. Fix: use one.")
    corpus, curated = api.corpus_reader(config)
    dataset_dir = storage.join(to, "dataset")
    tag = fingerprint(corpus, curated if stage == "curated" else None)
    totals = {"rows": 0, "documents": set(), "kinds": {}, "generated_tokens": 0, "grounding_sum": 0.0,
              "grounding_rows": 0}
    files = []
    for i, (p, table) in enumerate(api.iter_tables(stage=stage, config=config, reader=(corpus, curated))):
        if p is not None:  # a partition of the synthetic stage: scored against its documents here
            table = _with_grounding(table.select(COLUMNS), corpus, p)
        else:  # a curated shard: scored by `curate`
            table = table.select([*COLUMNS, "grounding"])
        name = f"data/train-{tag}-p{i if p is None else p:05d}.parquet"
        storage.write_bytes(storage.join(dataset_dir, name), storage.table_to_parquet_bytes(table))
        files.append(name)
        cols = table.select(["doc_id", "kind", "num_generated_tokens", "grounding"]).to_pydict()
        totals["rows"] += table.num_rows
        totals["documents"].update(cols["doc_id"])
        for k in cols["kind"]:
            totals["kinds"][k] = totals["kinds"].get(k, 0) + 1
        totals["generated_tokens"] += sum(t or 0 for t in cols["num_generated_tokens"])
        scores = [g for g in cols["grounding"] if g is not None]
        totals["grounding_sum"] += sum(scores)
        totals["grounding_rows"] += len(scores)
    if not files:
        raise EntiGraphError(f"{output_dir!r} holds no committed {stage} rows for its current config. Fix: run "
                             "`ray-entigraph synthesize` on it first.")
    stats = {**_stats(config, stage, totals, corpus.prompts), "fingerprint": tag}
    storage.write_text(storage.join(dataset_dir, "README.md"), dataset_card(stats, push_to_hub))

    model_dir = None
    model_src = train_url(config, "model")
    if include_model and storage.exists(storage.join(model_src, "config.json")):
        model_dir = storage.join(to, "model")
        _copy_folder(model_src, model_dir)
        report_url = Layout(config.output_dir).eval_url("report.json")
        report = json.loads(storage.read_text(report_url)) if storage.exists(report_url) else None
        storage.write_text(storage.join(model_dir, "README.md"),
                           model_card(report, stats, base_model_name(config), push_model_to_hub, push_to_hub))
    summary = ExportSummary(to=to, dataset_dir=dataset_dir, model_dir=model_dir, num_rows=stats["num_rows"],
                            num_documents=stats["num_documents"], generated_tokens=stats["generated_tokens"],
                            mean_grounding=stats["mean_grounding"], files=files)
    storage.write_text(storage.join(to, "export.json"),
                       json.dumps({**stats, "files": files, "model": model_dir is not None}, indent=2))
    if push_to_hub:
        push_folder(dataset_dir, push_to_hub, "dataset", private=private, token=token, api=hub_api)
        summary.pushed["dataset"] = push_to_hub
    if push_model_to_hub:
        if model_dir is None:
            raise EntiGraphError(f"--push-model-to-hub: the run {output_dir!r} has no exported model at {model_src}. "
                                 "Fix: run `ray-entigraph train` first.")
        push_folder(model_dir, push_model_to_hub, "model", private=private, token=token, api=hub_api)
        summary.pushed["model"] = push_model_to_hub
    return summary


def _copy_folder(src: str, dst: str) -> None:
    """Copy a model folder file by file, streamed (weights are not held in memory), on any storage."""
    import shutil
    import tempfile

    if storage.is_local(src) and storage.is_local(dst):
        shutil.copytree(src, dst, dirs_exist_ok=True)
    elif storage.is_local(src):
        storage.put_dir(src, dst)
    elif storage.is_local(dst):
        storage.get_dir(src, dst)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            storage.get_dir(src, tmp)
            storage.put_dir(tmp, dst)


def push_folder(folder: str, repo_id: str, repo_type: str, *, private: bool = False, token: str | None = None,
                api=None) -> None:
    """Upload a folder as written to a Hub repository (created if missing). `api` is a `huggingface_hub.HfApi`."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type=repo_type,
                      commit_message=f"ray_entigraph {__version__} export")
