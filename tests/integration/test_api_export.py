"""The Python API and `export`, in process on local Ray with the echo engine: the example script runs, the
corpus it opens and the folder it exports hold exactly the current config's rows (rows of an older config
planted in the same folder are left out), and the cards hold their fields."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import yaml

import ray_entigraph as eg
from ray_entigraph import schema
from tests import stores

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[2]
ARGS = ["engine.kind=echo", "num_partitions=4", "input.max_documents=4", "extract.max_attempts=1",
        "plan.max_pairs_per_doc=3", "plan.max_triplets_per_doc=1", "plan.tasks_per_group=2",
        "resources.batch_size=1"]


def test_example_script_opens_and_exports_only_the_current_configs_rows(ray_local, tmp_path, monkeypatch, capsys):
    import datasets

    out, exported = tmp_path / "run", tmp_path / "export"
    # an older config in the same folder: other sampling, so another synthesis identity with its own rows
    eg.synthesize("demo", [f"output_dir={out}", *ARGS, "synthesis.sampling.temperature=0.3"])
    old = {r["task_id"] for r in stores.rows(out, schema.SYNTHESIZE)}
    (old_identity,) = stores.identities(out, schema.SYNTHESIZE)
    # exported and opened with `datasets` (which caches a local folder by its name and its card's data_files)
    eg.export(str(out), str(tmp_path / "old"))
    assert len(datasets.load_dataset(str(tmp_path / "old" / "dataset"), split="train")) == len(old)

    monkeypatch.setattr(sys, "argv", ["python_api.py", str(out), str(exported), *ARGS])
    runpy.run_path(str(ROOT / "examples" / "python_api.py"), run_name="__main__")
    printed = capsys.readouterr().out

    (new_identity,) = set(stores.identities(out, schema.SYNTHESIZE)) - {old_identity}
    current = {r["task_id"] for r in stores.rows(out, schema.SYNTHESIZE, new_identity)}
    assert len(old - current) >= len(old) // 2  # the older config's relation texts (summaries are shared)
    assert f"{len(current)} synthetic rows" in printed

    ds = eg.load_corpus(str(out))
    assert isinstance(ds, datasets.Dataset) and set(ds["task_id"]) == current and len(ds) == len(current)
    assert len(eg.load_corpus(str(out), "documents", format="arrow")) == 4
    ents = eg.load_corpus(str(out), "entities", format="arrow", columns=["doc_id", "entities"])
    assert ents.column_names == ["doc_id", "entities"] and ents.num_rows == 4
    on_ray = eg.load_corpus(str(out), format="ray", columns=["task_id"]).take_all()
    assert {r["task_id"] for r in on_ray} == current

    loaded = datasets.load_dataset(str(exported / "dataset"), split="train")
    assert sorted(loaded["task_id"]) == sorted(current)  # not the older export's rows from the cache
    assert set(loaded.column_names) >= {"text", "doc_id", "title", "kind", "entities", "grounding"}
    assert all(0.0 <= g <= 1.0 for g in loaded["grounding"])
    card = (exported / "dataset" / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])

    meta = json.loads((exported / "export.json").read_text())
    assert header["configs"][0]["data_files"][0]["path"] == f"data/train-{meta['fingerprint']}-*.parquet"
    assert meta["num_rows"] == len(current) and meta["num_documents"] == 4 and meta["prompt_version"]
    for field in (meta["generator_model"], meta["prompt_version"], f"{meta['num_rows']:,}",
                  f"{meta['generated_tokens']:,}", f"{meta['mean_grounding']:.3f}", "temperature 0.7"):
        assert field in card
    assert not (exported / "model").exists()  # the run trained no model

    # the HTML report: every sampled document's entities as nodes and relation texts as edges, in the page's data
    from ray_entigraph.view import build_view

    shown = build_view(str(out), str(tmp_path / "view.html"), max_documents=3)
    page = (tmp_path / "view.html").read_text()
    data = json.loads(page.split('<script id="data" type="application/json">')[1].split("</script>")[0])
    assert shown["documents"] == 4 and len(data["documents"]) == 3 and "3 of 4 documents" in data["sampling"]
    entities = {r["doc_id"]: r["entities"] for r in ents.to_pylist()}
    relations = [r for r in ds.to_list() if r["kind"] in ("pair", "triplet", "qa")]
    for doc in data["documents"]:
        assert doc["entities"][:len(entities[doc["doc_id"]])] == list(entities[doc["doc_id"]])
        mine = sorted(r["text"] for r in relations if r["doc_id"] == doc["doc_id"])
        assert sorted(t["text"] for t in doc["texts"]) == mine and mine
    assert shown["relation_texts_shown"] == sum(len(d["texts"]) for d in data["documents"])

    # the push uploads the folder as written (the Hub cannot be reached from here: a recorder stands in for it)
    hub = HubRecorder()
    pushed = eg.export(str(out), str(tmp_path / "pushed"), push_to_hub="org/kestavel", hub_api=hub)
    assert hub.calls == [("create_repo", "org/kestavel", "dataset"),
                         ("upload_folder", "org/kestavel", "dataset", str(tmp_path / "pushed" / "dataset"))]
    assert pushed.pushed == {"dataset": "org/kestavel"}
    assert "# org/kestavel" in (tmp_path / "pushed" / "dataset" / "README.md").read_text()


class HubRecorder:
    """Records what `huggingface_hub.HfApi` would be asked to do."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, *, repo_type, private, exist_ok):
        self.calls.append(("create_repo", repo_id, repo_type))

    def upload_folder(self, *, folder_path, repo_id, repo_type, commit_message):
        assert (Path(folder_path) / "README.md").exists()
        self.calls.append(("upload_folder", repo_id, repo_type, folder_path))


def test_load_corpus_and_export_name_a_folder_without_a_run(tmp_path):
    from ray_entigraph.errors import EntiGraphError

    with pytest.raises(EntiGraphError, match="holds no run.*config.yaml"):
        eg.load_corpus(str(tmp_path))
    with pytest.raises(EntiGraphError, match="holds no run"):
        eg.export(str(tmp_path), str(tmp_path / "x"))


def test_every_engine_actor_finds_the_one_rate_limiter_of_its_endpoint(ray_local):
    """`gate_for` inside Ray: two gates of the same endpoint reach one named actor, so their reservations share
    one schedule (60 requests a minute: one start per second between them)."""
    import asyncio

    from ray_entigraph.engines.ratelimit import RayGate, gate_for

    first, second = (gate_for("http://api.example/v1", "m", 60, None) for _ in range(2))
    assert isinstance(first, RayGate) and isinstance(second, RayGate)
    waits = [asyncio.run(g.reserve(0)) for g in (first, second, first)]
    assert waits[0] == 0.0 and 0.5 < waits[1] <= 1.0 and 1.5 < waits[2] <= 2.0, waits
