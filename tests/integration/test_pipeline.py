"""The real Ray Data pipeline on a local Ray instance with a real (tiny, random) transformers model."""

from __future__ import annotations

import glob
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from ray_entigraph import schema, storage
from ray_entigraph.config import load_config
from ray_entigraph.ledger import read_run_state
from ray_entigraph.pipeline import StageFailed, synthesize
from ray_entigraph.planning import entigraph_tasks
from ray_entigraph.prompts import load_prompt_set
from ray_entigraph.text.plan import allocate_budget
from tests import stores

pytestmark = pytest.mark.timeout(600)


def tiny_config(model_dir, corpus, out, *extra):
    return load_config(None, [
        f"input.path={corpus}", f"output_dir={out}", f"model.name={model_dir}", "model.dtype=float32",
        "ingest.max_document_tokens=256", "extract.max_attempts=1", "extract.sampling.max_new_tokens=12",
        "synthesis.sampling.max_new_tokens=12", "plan.max_pairs_per_doc=3", "plan.max_triplets_per_doc=1",
        "plan.tasks_per_group=2", "resources.batch_size=2", "engine.max_batch_size=4", *extra,
    ])


@pytest.fixture()
def messy_folder(tmp_path, small_corpus, demo_docs):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "corpus.jsonl").write_text(small_corpus.read_text())
    (folder / "empty.txt").write_text("")
    (folder / "latin1.txt").write_bytes("Caf\xe9 Ol\xe9 in Port Imbrel, a town of note.".encode("latin-1"))
    (folder / "long.md").write_text("\n\n".join(d["article"] for d in demo_docs[2:5]))  # ~800 tokens > 256
    return folder


def _synthetic_rows(out, identity=None):
    return stores.rows(out, schema.SYNTHESIZE, identity)


def _shards(out):
    return sorted(glob.glob(f"{out}/synthetic/*/p=*/*.parquet"))


def _expected_task_ids(config):
    """Computed apart from the planner: every committed entities row, the reference budget allocation."""
    prompts = load_prompt_set(config.synthesis.prompts)
    ents = stores.rows(config.output_dir, schema.EXTRACT)
    from ray_entigraph.planning import capacity

    capacities = {e["doc_id"]: capacity(config, len(e["entities"])) for e in ents}
    alloc = allocate_budget(capacities, config.plan.max_tasks_total)
    return {t["task_id"] for e in ents for t in entigraph_tasks(config, prompts, e, alloc[e["doc_id"]])}


def _count_calls(monkeypatch, module, name: str) -> list:
    """Count the driver's calls of `module.name` through every binding of it in the package."""
    calls: list = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("ray_entigraph") and getattr(mod, name, None) is original:
            monkeypatch.setattr(mod, name, counted)
    return calls


def test_synthesize_end_to_end_with_bad_inputs_and_resume(ray_local, tiny_model_dir, messy_folder, tmp_path,
                                                          monkeypatch):
    import ray_entigraph.inputs
    import ray_entigraph.prompts

    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, messy_folder, out)
    prompt_loads = _count_calls(monkeypatch, ray_entigraph.prompts, "load_prompt_set")
    listings = _count_calls(monkeypatch, ray_entigraph.inputs, "list_input_files")
    summary = synthesize(config)
    # the run is resolved once (context.RunContext) and passed down: one prompt load, one input listing
    assert len(prompt_loads) == 1 and len(listings) == 1
    monkeypatch.undo()

    # bad inputs are recorded with their reason, never dropped silently
    errors = stores.error_rows(out, schema.INGEST)
    reasons = " | ".join(e["error"] for e in errors)
    assert "empty file" in reasons and "not valid UTF-8" in reasons
    docs = stores.rows(out, schema.INGEST)
    long_chunks = [d for d in docs if d["source"].endswith("long.md")]
    assert len(long_chunks) >= 3 and all(d["num_tokens"] <= 256 for d in docs)
    assert {d["num_chunks"] for d in long_chunks} == {len(long_chunks)}
    assert len({d["parent_doc_id"] for d in docs}) == 3  # 2 jsonl documents + long.md, chunked
    assert summary.num_documents == len(docs)

    # every planned request is present exactly once, with the documented schema
    rows = _synthetic_rows(out)
    ids = [r["task_id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert set(ids) == _expected_task_ids(config)
    assert {r["kind"] for r in rows} >= {"pair", "triplet"}
    assert set(rows[0]) == set(schema.SYNTHETIC.names)
    for r in rows:
        if r["kind"] in ("pair", "triplet"):
            assert r["num_prompt_tokens"] > 0 and r["num_generated_tokens"] > 0 and r["model"] == config.model.name
            assert len(r["entities"]) == (2 if r["kind"] == "pair" else 3)
    assert (out / "config.yaml").exists() and load_config(out / "config.yaml") == config

    # loadable with datasets
    import datasets

    ds = datasets.load_dataset("parquet", data_files=_shards(out), split="train")
    assert ds.num_rows == len(rows)

    # the dry run agrees with what ran (entity counts now come from the committed extraction)
    from ray_entigraph.estimate import dry_run

    est = dry_run(config)
    assert est["num_documents_with_known_entities"] == est["num_documents"] == len(docs)
    assert est["num_relation_requests"] == sum(r["kind"] in ("pair", "triplet") for r in rows)
    assert est["num_prompt_tokens"] > 0 and est["estimated_cost_usd"] is None

    # a re-run finds everything committed and generates nothing
    shards_before = _shards(out)
    again = synthesize(config)
    assert _shards(out) == shards_before
    assert again.num_synthetic_rows == len(rows)
    state = read_run_state(str(out))
    assert state["run"]["state"] == "finished"
    assert state["stages"]["synthetic"]["num_ok"] == len(rows)
    this_run = state["stages"]["synthetic"]["this_run"]
    assert this_run["expected"] == this_run["done"] == len(rows) and this_run["pending"] == 0

    # a changed prompt version gives new keys: nothing reused, nothing mixed
    prompt = tmp_path / "v2.yaml"
    prompt.write_text((load_prompt_set("entigraph-v1").model_dump_json()).replace('"entigraph-v1"', '"entigraph-v2"'))
    config2 = tiny_config(tiny_model_dir, messy_folder, out, f"synthesis.prompts={prompt}")
    synthesize(config2)
    from ray_entigraph.context import RunContext
    from ray_entigraph.train.data import pack_units, read_texts

    ctx2 = RunContext.resolve(config2)
    v2 = _synthetic_rows(out, ctx2.synthesis_id)  # another identity folder beside the first, which is unchanged
    (old,) = [i for i in stores.identities(out, schema.SYNTHESIZE) if i != ctx2.synthesis_id]
    assert sorted(r["task_id"] for r in _synthetic_rows(out, old)) == sorted(ids)
    assert v2 and {r["prompt_version"] for r in v2} == {"entigraph-v2"} and not {r["task_id"] for r in v2} & set(ids)
    # what training packs for the changed config: the new rows only, each once
    corpus = ctx2.corpus()
    texts = [t for u in pack_units(ctx2) if u["fmt"] == "synthetic" for t in read_texts(u, corpus)]
    assert sorted(texts) == sorted(r["text"] for r in v2 if r["text"])


def test_partial_shards_are_completed_exactly_once(ray_local, tiny_model_dir, small_corpus, tmp_path):
    """Delete some committed synthetic shards (as if the run died before them): the re-run redoes only those."""
    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, small_corpus, out)
    synthesize(config)
    store = stores.store(out, schema.SYNTHESIZE)
    entries = [(p, e) for p in range(store.num_partitions) for e in store.part(p).manifest_entries()]
    assert len(entries) >= 3
    lost = entries[: len(entries) // 2]
    lost_ids = set()
    for p, e in lost:
        part = store.part(p)
        lost_ids |= set(pq.read_table(storage.join(part.url, e["file"])).column("task_id").to_pylist())
        storage.filesystem(part.committed_url)[0].rm(storage.join(part.committed_url, f"{e['shard']}.json"))
    # as if the run died before sealing: no partition manifest, no stage summary
    storage.filesystem(store.url)[0].rm(storage.join(store.url, "_manifest"), recursive=True)
    synthesize(config)
    rows = store.read_all()
    ids = [r["task_id"] for r in rows]
    assert len(ids) == len(set(ids)) and lost_ids <= set(ids)
    assert set(ids) == _expected_task_ids(config)


def test_rephrase_augmenter(ray_local, tiny_model_dir, small_corpus, tmp_path):
    out = tmp_path / "rephrase"
    config = tiny_config(tiny_model_dir, small_corpus, out, "synthesis.augmenter=rephrase",
                         "synthesis.prompts=rephrase-v1", "plan.rephrase_repeats=2", "ingest.max_document_tokens=1024")
    synthesize(config)
    rows = _synthetic_rows(out)
    assert sorted({r["kind"] for r in rows}) == ["rephrase:child", "rephrase:scholarly", "rephrase:wikipedia"]
    assert len(rows) == 2 * 3 * 2 == len({r["task_id"] for r in rows})
    assert not (out / "entities").exists()


def test_rewrite_augmenter_picks_formats_by_rules_and_curation_filters_outputs(ray_local, demo_docs, tmp_path):
    """The rewrite augmenter end to end (echo engine): a Parquet corpus with metadata columns, input.where
    leaving one document out, formats chosen per document by rules over its metadata, each rewrite's
    max_new_tokens in proportion to its chunk, chunked documents rewritten chunk by chunk; then the output
    filters drop every row the echo engine cut off at max_new_tokens, each with its reason."""
    import pyarrow as pa

    records = [{"title": d["title"], "text": d["article"], "quality": q, "lang": lang}
               for d, q, lang in zip(demo_docs[:4], [0.9, 0.2, 0.9, 0.9], ["en", "en", "en", "fr"])]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "corpus.parquet")
    out = tmp_path / "rewrite"
    config = load_config(None, [
        f"input.path={tmp_path / 'corpus.parquet'}", f"output_dir={out}", "engine.kind=echo", "num_partitions=2",
        "input.where=['lang == en']", "synthesis.augmenter=rewrite", "synthesis.prompts=rewrite-v1",
        'rewrite.formats=[{name: faq, when: ["quality >= 0.5"]}, {name: wikipedia, when: ["quality < 0.5"]}, '
        '{name: table, repeats: 2}]', "rewrite.output_ratio=0.25", "rewrite.min_new_tokens=16",
        "synthesis.sampling.max_new_tokens=48", "ingest.max_document_tokens=256", "curate.enabled=true",
        "curate.output_filters=[truncated, refusal]", "curate.min_chars=0"])
    summary = synthesize(config)
    docs = {d["doc_id"]: d for d in stores.rows(out, schema.INGEST)}
    assert {d["title"] for d in docs.values()} == {r["title"] for r in records[:3]}  # the French one left out
    assert max(d["num_chunks"] for d in docs.values()) > 1  # long documents are rewritten chunk by chunk
    rows = _synthetic_rows(out)
    by_doc: dict[str, list[str]] = {}
    for r in rows:
        by_doc.setdefault(r["doc_id"], []).append(r["kind"].removeprefix(schema.KIND_REWRITE_PREFIX))
        budget = json.loads(r["sampling_json"])["max_new_tokens"]
        assert budget == min(48, max(16, -(-docs[r["doc_id"]]["num_tokens"] // 4)))
    for doc_id, kinds in by_doc.items():
        quality = json.loads(docs[doc_id]["metadata_json"])["quality"]
        assert sorted(kinds) == sorted(["faq" if quality >= 0.5 else "wikipedia", "table", "table"])
    assert set(by_doc) == set(docs) and len(rows) == 3 * len(docs) == summary.num_tasks_planned
    curation = summary.curation
    assert curation["kept"] == 0 and curation["dropped_output"] == len(rows)  # echo stops at max_new_tokens
    drops = [r["error"] for u in glob.glob(str(out / "errors" / "curated" / "**" / "*.parquet"), recursive=True)
             for r in pq.read_table(u).to_pylist()]
    assert len(drops) == len(rows) and all(d.startswith("truncated") for d in drops)
    _check_stitched_training_texts(config, docs, rows)


def _check_stitched_training_texts(config, docs: dict, rows: list[dict]) -> None:
    """Packing the rewrites (train.stitch_chunks, text/stitch.py): a long document's chunk rewrites of one
    format are trained as one text per repeat, in chunk order; every other row as it is; nothing lost."""
    from ray_entigraph.config import derive
    from ray_entigraph.context import RunContext
    from ray_entigraph.train.data import block_files, pack_units, read_texts, run_pack

    config = derive(config, ["curate.enabled=false", "train.block_len=32",  # two formats read each partition
                             "train.streams={documents: 0.4, 'format:table': 0.3, 'format:faq': 0.3}"])
    ctx = RunContext.resolve(config)
    counts = run_pack(config, ctx)  # routes the chunks' rewrites first, then packs
    assert counts["format:table"] > 0 and set(block_files(ctx)) == {"documents", "format:table", "format:faq"}
    corpus = ctx.corpus()
    texts = {"synthetic": [], "stitched": []}
    for unit in pack_units(ctx):
        if unit["source"] == "format:table" and unit["fmt"] in texts:
            texts[unit["fmt"]] += read_texts(unit, corpus)
    table = [r for r in rows if r["kind"] == "rewrite:table"]
    whole = [r["text"] for r in table if docs[r["doc_id"]]["num_chunks"] == 1]
    assert sorted(texts["synthetic"]) == sorted(whole)  # rows of unchunked documents, as they are
    expected = []
    for parent in {d["parent_doc_id"] for d in docs.values() if d["num_chunks"] > 1}:
        chunks = sorted((d["chunk_index"], d["doc_id"]) for d in docs.values() if d["parent_doc_id"] == parent)
        for repeat in range(2):  # the r-th rewrite of each chunk by task id, chunks in order
            expected.append("\n\n".join(sorted((r["task_id"], r["text"]) for r in table if r["doc_id"] == d)[repeat][1]
                                        for _, d in chunks))
    assert expected and sorted(texts["stitched"]) == sorted(expected)


def test_error_fraction_fails_the_stage_with_reason(ray_local, tiny_model_dir, small_corpus, tmp_path):
    out = tmp_path / "fail"
    # a random model never writes an entity list; without the heuristic fallback every document fails
    config = tiny_config(tiny_model_dir, small_corpus, out, "extract.fallback=none", "max_error_fraction=0.1")
    with pytest.raises(StageFailed, match=r"Stage 'entities': (\d+) of \1 requests failed .*max_error_fraction"):
        synthesize(config)
    errs = stores.error_rows(out, schema.EXTRACT)
    assert len(errs) >= 2 and all("extraction failed after 1 attempts: " in e["error"] for e in errs)
    assert read_run_state(str(out))["run"]["state"] == "failed"


def test_cli_status_of_a_folder_without_a_run_is_an_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ray_entigraph", "status", str(tmp_path), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().endswith("holds no run (neither _layout.json nor config.yaml). Fix: pass the "
                                        "output_dir of a run.")


def test_rerun_retries_failed_requests_only(ray_local, tiny_model_dir, small_corpus, tmp_path):
    out = tmp_path / "retry"
    config = tiny_config(tiny_model_dir, small_corpus, out, "extract.fallback=none", "max_error_fraction=1.0")
    synthesize(config)  # every extraction fails (a random model writes no entity list); tolerated here
    store = stores.store(out, schema.EXTRACT)
    first = store.all_entries()
    failed_keys = {r["request_key"] for r in stores.error_rows(out, schema.EXTRACT)}
    assert failed_keys and sum(e["num_ok"] for e in first) == 0
    synthesize(config)  # the same command again: the failed requests are attempted again, nothing else
    second = [e for e in store.all_entries() if e["committed_at"] > max(x["committed_at"] for x in first)]
    assert sum(e["num_failed"] for e in second) == len(failed_keys)
    state = read_run_state(str(out))["stages"]["entities"]["this_run"]
    assert state["expected"] == len(failed_keys) and state["done"] == 0 and state["failed"] == len(failed_keys)


def test_duplicate_documents_and_reused_output_dir(ray_local, tiny_model_dir, demo_docs, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    line = lambda d: json.dumps({"title": d["title"], "text": d["article"]})  # noqa: E731
    (folder / "a.jsonl").write_text(line(demo_docs[0]) + "\n" + line(demo_docs[1]) + "\n")
    (folder / "b.jsonl").write_text(line(demo_docs[1]) + "\n")  # the same document again
    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, folder, out, "ingest.max_document_tokens=1024", "plan.max_pairs_per_doc=1",
                         "plan.max_triplets_per_doc=0")
    synthesize(config)
    entities = stores.rows(out, schema.EXTRACT)
    keys = [e["request_key"] for e in entities]
    assert len(keys) == len(set(keys)) == 2  # one request per distinct document
    # the same output_dir with other inputs: the old documents are not part of the new run
    other = tmp_path / "other.jsonl"
    other.write_text(line(demo_docs[2]) + "\n")
    synthesize(tiny_config(tiny_model_dir, other, out, "ingest.max_document_tokens=1024", "plan.max_pairs_per_doc=1",
                           "plan.max_triplets_per_doc=0"))
    assert read_run_state(str(out))["run"]["stages"]["entities"]["expected"] == 1


def test_an_edited_input_file_replaces_its_documents(ray_local, demo_docs, tmp_path):
    """Ingest records each input file's identity (url, size, mtime): editing a file re-ingests it, and the
    current documents are the new ones only (the old version's shards stay on storage, unread)."""
    from ray_entigraph.context import RunContext
    from ray_entigraph.corpus import read_documents

    corpus = tmp_path / "in.jsonl"
    line = lambda d: json.dumps({"title": d["title"], "text": d["article"]}) + "\n"  # noqa: E731
    corpus.write_text(line(demo_docs[0]) + line(demo_docs[1]))
    config = load_config(None, [f"input.path={corpus}", f"output_dir={tmp_path / 'run'}", "engine.kind=echo",
                                "num_partitions=4", "ingest.max_document_tokens=1024"])

    def current() -> dict[str, str]:
        ctx = RunContext.resolve(config)
        c = ctx.corpus()
        return {d["title"]: d["text"] for p in range(c.num_partitions) for d in read_documents(c, p)}

    synthesize(config, ingest_only=True)
    before = current()
    assert set(before) == {demo_docs[0]["title"], demo_docs[1]["title"]}
    edited = dict(demo_docs[1], article=demo_docs[1]["article"] + "\n\nA sentence added in the second edition.")
    corpus.write_text(line(demo_docs[0]) + line(edited))
    synthesize(config, ingest_only=True)
    after = current()
    assert set(after) == set(before) and after[edited["title"]].endswith("added in the second edition.")
    assert after[demo_docs[0]["title"]] == before[demo_docs[0]["title"]]
    assert len(stores.rows(tmp_path / "run", schema.INGEST)) == 4  # both versions committed, two current
