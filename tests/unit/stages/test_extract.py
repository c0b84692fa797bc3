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
