"""The extract stage's parsing step (stages/extract.py): names are grounded in the document before the cap."""

from ray_entigraph.stages.extract import entities_from_output

DOC = "Mara Vell founded the Kestavel Guild in 1841. The guild met at Orrin Hall."


def test_invented_names_early_in_the_list_do_not_push_out_real_ones():
    raw = '{"summary": "s", "entities": ["Lord Fakeworth", "Imaginary Bay", "Mara Vell", "Kestavel Guild", ' \
          '"Orrin Hall"]}'
    parsed, dropped = entities_from_output(raw, DOC, max_entities=2, grounded=True)
    assert parsed.entities == ["Mara Vell", "Kestavel Guild"] and dropped == 2


def test_without_grounding_the_cap_keeps_the_model_order():
    raw = '{"summary": "s", "entities": ["Lord Fakeworth", "Mara Vell", "Orrin Hall"]}'
    parsed, dropped = entities_from_output(raw, DOC, max_entities=2, grounded=False)
    assert parsed.entities == ["Lord Fakeworth", "Mara Vell"] and dropped == 0




def test_heuristic_source_takes_the_documents_names_without_loading_a_model(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_entigraph.config import load_config
    from ray_entigraph.layout import Layout
    from ray_entigraph.prompts import load_prompt_set
    from ray_entigraph.stages.extract import EntityExtractionWorker
    from ray_entigraph.text.identity import doc_id_for

    config = load_config(None, [f"output_dir={tmp_path}", "extract.source=heuristic", "model.name=no/such-model",
                                "num_partitions=1"])
    layout = Layout(str(tmp_path), num_partitions=1)
    worker = EntityExtractionWorker(config, load_prompt_set("entigraph-v1"), False, "x", layout)
    assert worker.engine is None  # the model name does not even exist
    doc = DOC + " Later the Kestavel Guild moved to Port Imbrel under Odrin Vasquelle."
    worker(pa.table({"doc_id": [doc_id_for(doc)], "title": ["T"], "text": [doc], "request_key": ["k1"]}))
    [row] = [r for f in tmp_path.rglob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert row["entities_source"] == "heuristic" and row["parse_how"] == "not asked" and row["num_attempts"] == 0
    assert {"Mara Vell", "Orrin Hall", "Port Imbrel", "Odrin Vasquelle"} <= set(row["entities"])


def _streaming_worker(tmp_path, *overrides):
    from ray_entigraph.config import load_config
    from ray_entigraph.layout import Layout
    from ray_entigraph.prompts import load_prompt_set
    from ray_entigraph.stages.extract import EntityExtractionWorker

    config = load_config(None, [f"output_dir={tmp_path}", "engine.kind=echo", "extract.max_attempts=1",
                                "extract.fallback=heuristic", "num_partitions=2", "plan.max_pairs_per_doc=3",
                                "plan.max_triplets_per_doc=1", "plan.tasks_per_group=2", "resources.batch_size=2",
                                *overrides])
    prompts = load_prompt_set("entigraph-v1")
    layout = Layout(str(tmp_path), num_partitions=2)
    return config, prompts, EntityExtractionWorker(config, prompts, False, "x", layout, synthesis="s")


def _docs():
    import pyarrow as pa

    from ray_entigraph.text.identity import doc_id_for

    texts = [DOC + f" In {1850 + i} the Kestavel Guild sent Odrin Vasquelle to Port Imbrel{i}." for i in range(3)]
    return pa.table({"doc_id": [doc_id_for(t) for t in texts], "title": ["T"] * 3, "text": texts,
                     "request_key": [f"k{i}" for i in range(3)]})


def _rows(folder):
    import pyarrow.parquet as pq

    return [r for f in sorted(folder.rglob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_extraction_actors_synthesize_each_committed_document_as_the_plan_would(tmp_path):
    """With a synthesis id, the extraction unit commits its entities, then its documents' task groups in units
    of resources.batch_size groups on the same engine: exactly the tasks the synthesize stage plans for those
    rows, each committed once; the unit's row counts the synthesis tokens too. A rerun of the unit (its actor
    died after committing) rewrites the same shards; a retried unit (attempt 2) only extracts."""
    from ray_entigraph.planning import document_tasks
    from ray_entigraph.stages import extract

    config, prompts, worker = _streaming_worker(tmp_path)
    table = worker(_docs())
    entities = _rows(tmp_path / "entities")
    synthetic = _rows(tmp_path / "synthetic")
    planned = [t["task_id"] for row in entities for t in document_tasks(config, prompts, row, None)]
    assert len(entities) == 3 and len(planned) == len(set(planned)) > 3 * 4
    assert sorted(r["task_id"] for r in synthetic) == sorted(planned)
    generated = sum(r["num_generated_tokens"] for r in synthetic)
    assert generated > 0 and table.column("num_generated_tokens")[0].as_py() >= generated
    shards = sorted(p.name for p in (tmp_path / "synthetic").rglob("*.parquet"))
    assert len(shards) > 1  # several units: groups of 2 tasks, 2 groups per unit

    worker(_docs())
    assert sorted(p.name for p in (tmp_path / "synthetic").rglob("*.parquet")) == shards

    retried = tmp_path / "retried"
    config, prompts, worker = _streaming_worker(retried)
    real = extract.run_unit

    def second_attempt(*args, seen=None, **kwargs):
        out = real(*args, seen=seen, **kwargs)
        seen["attempt"] = 2
        return out

    extract.run_unit = second_attempt
    try:
        worker(_docs())
    finally:
        extract.run_unit = real
    assert len(_rows(retried / "entities")) == 3 and not list(retried.rglob("synthetic/**/*.parquet"))


def test_synthesis_streams_only_without_a_global_budget_and_with_units_for_every_actor():
    from types import SimpleNamespace

    from ray_entigraph.config import load_config
    from ray_entigraph.stages.extract import Extract, streams_synthesis

    def ctx(*overrides):
        return SimpleNamespace(config=load_config(None, ["resources.batch_size=4", *overrides]))

    assert streams_synthesis(ctx().config)
    assert not streams_synthesis(ctx("plan.max_tasks_total=100").config)  # the budget needs every extraction
    assert not streams_synthesis(ctx("extract.source=heuristic").config)  # no engine in the extraction actor
    assert not streams_synthesis(ctx("resources.synthesize_while_extracting=false").config)
    assert Extract().streams(ctx(), documents=1)  # one actor: no other actor to spread synthesis over
    four = ("resources.max_actors=4", "resources.units_in_flight_per_actor=2")
    assert not Extract().streams(ctx(*four), documents=4 * 15)  # 15 units for 8 slots: plan and spread instead
    assert Extract().streams(ctx(*four), documents=4 * 16)
