"""`synthesize --dry-run`: read the inputs, count documents and tokens, and estimate requests, tokens and cost
for the configured budget, with no Ray and no model (only the tokenizer).

With `sample` (a fraction, `--sample 0.01`), only a seeded sample of the input is read: the corpus's bytes,
files in listing order, are cut into SAMPLE_STRATA equal strata and each stratum gets one window covering
`sample` of it, at a seeded offset, wrapping around inside the stratum. A record (a JSON Lines line, a Parquet
row group, a whole file of another format) is read when its first byte falls in a window, so every record is
read with probability exactly `sample`, and each total is the sample's total over `sample` (the
Horvitz-Thompson estimator; stratifying keeps a long tail of document lengths from skewing it much).
"""

from __future__ import annotations

import math
import random

from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.context import RunContext
from ray_entigraph.corpus import read_entities
from ray_entigraph.engines.hf import document_tokenizer_name, load_tokenizer, token_offsets
from ray_entigraph.errors import ConfigError
from ray_entigraph.inputs import records_from_file, records_from_range, splittable
from ray_entigraph.partitions import partition_of
from ray_entigraph.planning import rewrite_tasks
from ray_entigraph.prompts import render_chat
from ray_entigraph.stages.ingest import documents_from_record
from ray_entigraph.text.plan import estimate_synthesis

# Entities per document assumed where none were extracted yet (`--assume-entities` overrides it).
DEFAULT_ASSUMED_ENTITIES = 15
SAMPLE_STRATA = 256  # strata of the corpus's bytes, one sampling window each


def sample_reads(files: list[tuple[str, str, int]], fraction: float, seed: int,
                 strata: int = SAMPLE_STRATA) -> list[tuple[str, str, int | None, int | None]]:
    """What a sample of `fraction` of the corpus reads: (url, format, start, end) byte ranges of splittable
    files (the records that start in the range) and (url, format, None, None) for a whole file whose first
    byte falls in a window. Every record is in exactly one read with probability `fraction`."""
    total = sum(size for _, _, size in files)
    if total == 0:
        return []
    width = total / strata
    rng = random.Random(seed)
    windows: list[tuple[float, float]] = []
    for k in range(strata):  # one window per stratum, wrapping inside it: each byte is covered w.p. fraction
        lo, hi = k * width, (k + 1) * width
        a = lo + rng.random() * width
        b = a + fraction * width
        windows += [(a, min(b, hi))] + ([(lo, lo + (b - hi))] if b > hi else [])
    windows.sort()
    reads: list[tuple[str, str, int | None, int | None]] = []
    offset = 0
    for url, fmt, size in files:
        lo, hi = offset, offset + size
        for a, b in windows:
            if b <= lo or a >= hi:
                continue
            if splittable(url, fmt):  # byte x of the file is read iff lo + x is in [a, b)
                start, end = math.ceil(max(a, lo) - lo), math.ceil(min(b, hi) - lo)
                if start < end:
                    reads.append((url, fmt, start, end))
            elif a <= lo < b:
                reads.append((url, fmt, None, None))
        offset = hi
    return reads


def dry_run(config: EntiGraphConfig, assume_entities: int = DEFAULT_ASSUMED_ENTITIES,
            sample: float | None = None) -> dict:
    """Read the inputs, count documents and tokens, and estimate requests, tokens and cost for the configured
    budget. Starts no Ray and no model (only the tokenizer). Entity counts come from committed extraction
    output where there is one, else `assume_entities` per document. With `sample` (0 < sample <= 1), only
    that share of the input is read (see the module's docstring) and every count is an estimate."""
    if sample is not None and not 0 < sample <= 1:
        raise ConfigError(f"--sample {sample}: the share of the input to read must be in (0, 1]. Fix: e.g. "
                          "--sample 0.01 for 1%.")
    if sample is not None and config.input.max_documents is not None:
        raise ConfigError("--sample with input.max_documents: a sample estimates the whole corpus, the cap reads "
                          "its first documents. Fix: drop one of them (input.max_documents=null).")
    ctx = RunContext.resolve(config)
    files = ctx.input_files
    tok = load_tokenizer(document_tokenizer_name(config), config.model.cache_dir)
    count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    offsets = token_offsets(tok)
    doc_tokens: dict[str, int] = {}
    num_rejected = 0
    if sample is None:
        reads = [(url, fmt, None, None) for url, fmt in files]
    else:
        reads = sample_reads(ctx.file_sizes(), sample, config.seed)

    def records(url: str, fmt: str, start: int | None, end: int | None):
        if start is None:
            return records_from_file(url, fmt, config.input)
        return records_from_range(url, fmt, config.input, start, end)

    num_filtered = 0
    rewrites: dict[str, int] | None = {} if config.synthesis.augmenter == "rewrite" else None
    for url, fmt, start, end in reads:
        for record in records(url, fmt, start, end):
            num_filtered += bool(record.get("filtered"))
            for row in documents_from_record(record, max_tokens=config.ingest.max_document_tokens,
                                             min_chars=config.ingest.min_document_chars, count_tokens=count,
                                             token_offsets=offsets):
                if row.get("error"):
                    num_rejected += 1
                elif config.input.max_documents is None or len(doc_tokens) < config.input.max_documents:
                    doc_tokens[row["doc_id"]] = row["num_tokens"]
                    if rewrites is not None:  # its rules read the row's columns, as the plan does
                        rewrites[row["doc_id"]] = len(rewrite_tasks(config, ctx.prompts, row))
    prompts = ctx.prompts

    def overhead(template, n_entities: int) -> int:
        if template is None:
            return 0
        values = {"title": "Title", "document": "", "entities": ""}
        values.update({f"entity_{i + 1}": "Entity" for i in range(n_entities)})
        text = tok.apply_chat_template(render_chat(template, values), tokenize=False, add_generation_prompt=True)
        return count(text)

    known = {}
    if config.synthesis.augmenter == "entigraph":
        corpus = ctx.corpus()
        for p in range(corpus.num_partitions):  # the dry run reads on the driver: it starts no Ray
            for row in read_entities(corpus, p, [{"doc_id": d} for d in doc_tokens
                                                 if partition_of(d, corpus.num_partitions) == p]):
                known[row["doc_id"]] = len(row["entities"] or [])
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
        budget=config.plan.max_tasks_total if sample is None else None, rephrase_per_doc=rephrase,
        tasks_per_doc=rewrites,
    )
    if sample is not None:
        est = _scaled(est, sample, config.plan.max_tasks_total)
        num_rejected, num_filtered = round(num_rejected / sample), round(num_filtered / sample)
    est.update(
        num_input_files=len(files),
        num_rejected_inputs=num_rejected,
        num_filtered_inputs=num_filtered,
        num_documents_with_known_entities=len(known),
        assumed_entities_per_document=assume_entities,
        estimated_cost_usd=config.cost.estimate(est["num_prompt_tokens"], est["max_generated_tokens"]),
    )
    if sample is not None:
        est.update(sample_fraction=sample, sampled_documents=len(doc_tokens), sampled_reads=len(reads))
    return est


def _scaled(est: dict, fraction: float, budget: int | None) -> dict:
    """A sample's estimate (made without the global budget) scaled to the whole corpus; a binding budget then
    caps the relation requests, their prompt tokens and generated tokens in proportion (an approximation: the
    budget's water level favours no document length)."""
    out = {k: round(v / fraction) for k, v in est.items()}
    relations = out["num_relation_requests"]
    if budget is not None and relations > budget:
        share = budget / relations
        extract_prompt = out["num_prompt_tokens"] - est["relation_prompt_tokens"] / fraction
        extract_gen = out["max_generated_tokens"] - est["relation_max_generated_tokens"] / fraction
        out["num_relation_requests"] = budget
        out["num_prompt_tokens"] = round(extract_prompt + share * est["relation_prompt_tokens"] / fraction)
        out["max_generated_tokens"] = round(extract_gen + share * est["relation_max_generated_tokens"] / fraction)
    return out
