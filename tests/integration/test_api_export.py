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
    """Two engine actors (real Ray actors, as a synthesis pool's) send 30 requests each to a local server that
    records when each arrives; with engine.openai.requests_per_minute=60 they find the one named schedule actor
    of their endpoint and hold 60 a minute between them within 10%. Time is virtual (one minute is four wall
    seconds) and shared: the schedule actor, both engines and the server read one injected clock."""
    import ray

    from ray_entigraph.config import OpenAIConfig
    from ray_entigraph.engines.ratelimit import RateSchedule, limiter_name
    from tests.unit.engines.test_openai_engine import ScriptedServer
    from tests.unit.engines.test_ratelimit import Clock, requests_per_minute

    clock = Clock(scale=15.0)  # time.monotonic is one clock for every process on this machine
    server = ScriptedServer(clock=clock.now)

    @ray.remote(num_cpus=0)
    class Sender:
        def __init__(self, url: str, clock: Clock):
            from ray_entigraph.engines.openai_engine import OpenAIEngine

            self.engine = OpenAIEngine(OpenAIConfig(base_url=url, api_key_env=None, max_concurrency=4,
                                                    requests_per_minute=60), "m")
            self.engine._sleep = clock.sleep

        def send(self, name: str, n: int) -> int:
            from ray_entigraph.engines.base import GenerationRequest, SamplingParams

            sampling = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=4, repetition_penalty=1.0)
            results = self.engine.generate([GenerationRequest(key=f"{name}{i}", sampling=sampling, messages=[
                {"role": "user", "content": "hi"}]) for i in range(n)])
            return sum(r.error is None for r in results)

    try:
        # the endpoint's schedule, on the shared clock; the engines find it by name (get_if_exists)
        schedule = ray.remote(num_cpus=0)(RateSchedule).options(name=limiter_name(server.url, "m")).remote(
            60, None, clock=clock.now)
        senders = [Sender.remote(server.url, clock) for _ in range(2)]
        assert ray.get([s.send.remote(name, 30) for s, name in zip(senders, "ab")], timeout=120) == [30, 30]
        limited = requests_per_minute(server.arrivals)
        assert len(server.arrivals) == 60 and abs(limited - 60) <= 6, limited
        ray.kill(schedule)
    finally:
        server.close()
