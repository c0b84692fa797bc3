"""`run` on a folder of documents, in process with the echo engine: editing one input file runs the synthesize
step again, which synthesizes that file's new document and nothing else; the current rows (what training
reads) hold the new document's rows and not the old version's, each task once; with nothing changed the step
is done earlier and skipped."""

from __future__ import annotations

import json

import pytest

from ray_entigraph import schema, storage
from ray_entigraph.config import load_config
from ray_entigraph.context import RunContext
from ray_entigraph.corpus import read_documents, read_synthetic
from ray_entigraph.workflows.steps import marker_url, run
from tests import stores

pytestmark = pytest.mark.timeout(300)
ARGS = ["engine.kind=echo", "num_partitions=4", "extract.max_attempts=1", "extract.fallback=heuristic",
        "plan.max_pairs_per_doc=4", "plan.max_triplets_per_doc=1", "plan.tasks_per_group=2",
        "resources.batch_size=1", "eval.questions=none"]
DOCS = {
    "guild.txt": "The Harbour Guild of Kestavel was founded in 1742 by Mara Odell. Her partner Tobias Renn kept the "
                 "ledgers in the Old Customs House. The Guild later moved to Port Imbrel under Captain Ilse Varga.",
    "observatory.txt": "The Selwyn Observatory stands above Lake Dunmere. Astronomer Helena Craig charted comets "
                       "there with her student Arthur Pell. The Royal Society of Dunmere funded the great telescope.",
    "railway.txt": "The Northmoor Railway linked Ashford to Bellhaven in 1861. Engineer Samuel Hart designed the "
                   "Greystone Viaduct. Queen Adelaide opened the line with Mayor Rupert Lyle of Bellhaven.",
}


def _current(config) -> list[dict]:
    """The synthetic rows training reads: the current identity's, for the current documents and plan."""
    corpus = RunContext.resolve(config).corpus()
    return [r for p in range(corpus.num_partitions) for r in read_synthetic(corpus, p)]


def _entries(out) -> dict[str, float]:
    """shard name -> committed_at, for every committed synthetic shard (every version's)."""
    return {e["shard"]: e["committed_at"] for e in stores.store(out, schema.SYNTHESIZE).all_entries()}


def _shard_docs(out) -> dict[str, set[str]]:
    store = stores.store(out, schema.SYNTHESIZE)
    return {e["shard"]: set(storage.read_parquet(storage.join(store.part(p).url, e["file"]), ["doc_id"])
                            .column("doc_id").to_pylist())
            for p in range(store.num_partitions) for e in store.part(p).manifest_entries() if e.get("rows", 0) > 0}


def _doc_ids(config) -> dict[str, str]:
    """source file name -> doc_id of its current document."""
    corpus = RunContext.resolve(config).corpus()
    return {d["source"].rsplit("/", 1)[-1]: d["doc_id"] for p in range(corpus.num_partitions)
            for d in read_documents(corpus, p, ["doc_id", "source"])}


def _marker(config) -> dict:
    return json.loads(storage.read_text(marker_url(config, "synthesize")))


def test_run_after_editing_an_input_file_resynthesizes_only_that_file(ray_local, tmp_path, capsys):
    folder, out = tmp_path / "docs", tmp_path / "run"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    config = load_config(None, [f"input.path={folder}", f"output_dir={out}", *ARGS])

    run(config, until="synthesize")
    assert "[run] synthesize: starting" in capsys.readouterr().out
    first_marker, first_entries, first_docs = _marker(config), _entries(out), _doc_ids(config)
    first_rows = _current(config)
    assert set(first_docs) == set(DOCS) and {r["doc_id"] for r in first_rows} == set(first_docs.values())

    edited = DOCS["observatory.txt"].replace("charted comets there", "charted comets and one bright nova there")
    (folder / "observatory.txt").write_text(edited)
    run(config, until="synthesize")
    log = capsys.readouterr().out
    assert "[run] synthesize: starting" in log and "synthesize: done earlier" not in log
    second_marker, second_docs = _marker(config), _doc_ids(config)
    assert second_marker["identity"] != first_marker["identity"]
    old_id, new_id = first_docs["observatory.txt"], second_docs["observatory.txt"]
    assert new_id != old_id
    assert {k: v for k, v in second_docs.items() if k != "observatory.txt"} == \
           {k: v for k, v in first_docs.items() if k != "observatory.txt"}

    rows = _current(config)
    ids = [r["task_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a task read twice"
    by_doc = {d: {r["task_id"] for r in rows if r["doc_id"] == d} for d in {r["doc_id"] for r in rows}}
    assert set(by_doc) == set(second_docs.values())  # the new version in, the old one out
    assert by_doc[new_id] and old_id not in by_doc
    assert any(r["doc_id"] == old_id for r in stores.rows(out, schema.SYNTHESIZE))  # still on storage, unread
    for name in ("guild.txt", "railway.txt"):  # untouched documents: the same rows as before
        doc = second_docs[name]
        assert by_doc[doc] == {r["task_id"] for r in first_rows if r["doc_id"] == doc}

    # nothing committed before was rewritten; every new shard is the edited document's
    second_entries = _entries(out)
    assert {k: second_entries[k] for k in first_entries} == first_entries
    added = set(second_entries) - set(first_entries)
    shard_docs = _shard_docs(out)
    assert added and all(shard_docs.get(s, set()) <= {new_id} for s in added)
    assert any(shard_docs.get(s) == {new_id} for s in added)

    run(config, until="synthesize")
    assert "[run] synthesize: done earlier" in capsys.readouterr().out
    assert _marker(config) == second_marker and _entries(out) == second_entries
