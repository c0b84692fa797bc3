"""`synthesize --dry-run`: read the inputs, count documents and tokens, and estimate requests, tokens and cost
for the configured budget, with no Ray and no model (only the tokenizer)."""

from __future__ import annotations

from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.context import RunContext
from ray_entigraph.corpus import read_entities
from ray_entigraph.engines.hf import document_tokenizer_name, load_tokenizer, token_offsets
from ray_entigraph.inputs import records_from_file
from ray_entigraph.partitions import partition_of
from ray_entigraph.prompts import render_chat
from ray_entigraph.stages.ingest import documents_from_record
from ray_entigraph.text.plan import estimate_synthesis

# Entities per document assumed where none were extracted yet (`--assume-entities` overrides it).
DEFAULT_ASSUMED_ENTITIES = 15


def dry_run(config: EntiGraphConfig, assume_entities: int = DEFAULT_ASSUMED_ENTITIES) -> dict:
    """Read the inputs, count documents and tokens, and estimate requests, tokens and cost for the configured
    budget. Starts no Ray and no model (only the tokenizer). Entity counts come from committed extraction
    output where there is one, else `assume_entities` per document."""
    ctx = RunContext.resolve(config)
    files = ctx.input_files
    tok = load_tokenizer(document_tokenizer_name(config), config.model.cache_dir)
    count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    offsets = token_offsets(tok)
    doc_tokens: dict[str, int] = {}
    num_rejected = 0
    for url, fmt in files:
        for record in records_from_file(url, fmt, config.input):
            for row in documents_from_record(record, max_tokens=config.ingest.max_document_tokens,
                                             min_chars=config.ingest.min_document_chars, count_tokens=count,
                                             token_offsets=offsets):
                if row.get("error"):
                    num_rejected += 1
                elif config.input.max_documents is None or len(doc_tokens) < config.input.max_documents:
                    doc_tokens[row["doc_id"]] = row["num_tokens"]
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
