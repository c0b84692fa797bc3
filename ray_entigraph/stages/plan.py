"""Plan: entities -> relation tasks, grouped per document into units of work (EntiGraph step 2's input).

Pure functions, no model: a document's tasks are emitted together and cut into groups of
`plan.tasks_per_group`, so one replica serves a document's requests back to back (prefix reuse) and the
document text travels once per group, not once per request. Tasks already committed are left out, which
is what makes a re-run finish the missing requests only.
"""

from __future__ import annotations

from ray_entigraph import schema
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.prompts import PromptSet
from ray_entigraph.text.identity import derive_seed, request_key
from ray_entigraph.text.plan import plan_entity_subsets, task_capacity


def _task(config: EntiGraphConfig, prompts: PromptSet, doc_id: str, kind: str, entities: tuple[str, ...],
          key_kind: str | None = None, text: str | None = None) -> dict:
    sampling = config.extract.sampling if kind == schema.KIND_SUMMARY else config.synthesis.sampling
    return {
        "task_id": request_key(
            doc_id=doc_id, kind=key_kind or kind, entities=entities, prompt_version=prompts.version,
            model=config.model.name, sampling=sampling.key(), seed=config.seed,
        ),
        "kind": kind,
        "entities": list(entities),
        "seed": derive_seed(config.seed, doc_id, key_kind or kind, *entities),
        "text": text,
    }


def entigraph_tasks(config: EntiGraphConfig, prompts: PromptSet, row: dict, max_tasks: int | None) -> list[dict]:
    """A summary task (its text is the extraction's summary) plus pair and triplet tasks for one document."""
    tasks = []
    if row.get("summary"):
        tasks.append(_task(config, prompts, row["doc_id"], schema.KIND_SUMMARY, (), text=row["summary"]))
    subsets = plan_entity_subsets(
        list(row["entities"]),
        seed=derive_seed(config.seed, row["doc_id"], "plan"),
        max_pairs=config.plan.max_pairs_per_doc,
        max_triplets=config.plan.max_triplets_per_doc,
        max_tasks=max_tasks,
    )
    for subset in subsets:
        kind = schema.KIND_PAIR if len(subset) == 2 else schema.KIND_TRIPLET
        tasks.append(_task(config, prompts, row["doc_id"], kind, subset))
    return tasks


def rephrase_tasks(config: EntiGraphConfig, prompts: PromptSet, row: dict) -> list[dict]:
    tasks = []
    for style in prompts.rephrase:
        for repeat in range(config.plan.rephrase_repeats):
            kind = schema.KIND_REPHRASE_PREFIX + style
            tasks.append(_task(config, prompts, row["doc_id"], kind, (), key_kind=f"{kind}#{repeat}"))
    return tasks


def capacity(config: EntiGraphConfig, num_entities: int) -> int:
    return task_capacity(num_entities, config.plan.max_pairs_per_doc, config.plan.max_triplets_per_doc)


def group_tasks(row: dict, tasks: list[dict], done: frozenset[str] | set[str], size: int) -> list[dict]:
    """Drop committed tasks and cut the rest into groups that carry the document once."""
    todo = [t for t in tasks if t["task_id"] not in done]
    return [
        {"doc_id": row["doc_id"], "title": row["title"], "text": row["text"], "tasks": todo[i : i + size]}
        for i in range(0, len(todo), size)
    ]


def plan_groups(row: dict, *, config: EntiGraphConfig, prompts: PromptSet, allocation: dict[str, int] | None,
                done: set[str]) -> list[dict]:
    """Ray Data flat_map function: one entities (or documents) row -> task groups. Its arguments arrive typed
    and built once per task (Ray ships fn_kwargs with the task), never parsed per row."""
    if config.synthesis.augmenter == "rephrase":
        tasks = rephrase_tasks(config, prompts, row)
    else:
        limit = None if allocation is None else allocation.get(row["doc_id"], 0)
        tasks = entigraph_tasks(config, prompts, row, limit)
    return group_tasks(row, tasks, done, config.plan.tasks_per_group)
