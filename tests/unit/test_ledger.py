"""The run ledger (ledger.py): stage totals read from the commit markers alone, the run state `status`
shows (with the judged/curated folders the run recorded), and the live progress line."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

import pytest

from ray_entigraph import ledger, schema, storage
from ray_entigraph.config import load_config
from ray_entigraph.layout import Layout
from ray_entigraph.ledger import Progress, StageTotals, read_run_state, stage_record, stage_totals, write_run_state

SYN = "synthetic/s1"  # a synthesis identity's partitioned folder


def _commit(output_dir: str, stage: str, keys: list[str], partition: int = 0, **stats) -> dict:
    """A commit into a plain stage folder, or into one partition of a partitioned one."""
    table = schema.rows_to_table([{"task_id": k, "text": f"text of {k}"} for k in keys], schema.SYNTHETIC)
    store = (Layout(output_dir, num_partitions=2).partitioned(stage).part(partition)
             if stage.split("/")[0] in schema.STAGES else storage.StageStore(output_dir, stage))
    return store.commit(table, None, keys=keys, stats=stats)


def test_stage_totals_add_up_the_commit_markers(tmp_path):
    out = str(tmp_path)
    for stage, second in ((SYN, 1), ("curated/c1", 0)):  # partitioned (two partitions) and plain
        _commit(out, stage, ["a", "b"], num_ok=3, num_failed=1, num_prompt_tokens=100, num_cached_tokens=40,
                num_generated_tokens=50, num_retries=2, wall_s=1.5, host="h1", node_id="n1")
        _commit(out, stage, ["c"], second, num_ok=2, num_prompt_tokens=10, num_generated_tokens=5, num_dropped=1,
                wall_s=0.5, host="h1", node_id="n2")
        totals = stage_totals(out, stage, num_partitions=2)
        assert (totals.num_shards, totals.num_ok, totals.num_failed) == (2, 5, 1)
        assert (totals.num_retries, totals.num_dropped) == (2, 1)
        assert (totals.num_prompt_tokens, totals.num_cached_tokens, totals.num_generated_tokens) == (110, 40, 55)
        assert totals.busy_s == pytest.approx(2.0)
        assert totals.hosts == ["h1"] and sorted(totals.node_ids) == ["n1", "n2"]  # each host and node once
        assert stage_totals(out, stage, since=time.time() + 60, num_partitions=2).num_shards == 0  # before `since`
    assert stage_totals(out, "entities/e1", num_partitions=2) == StageTotals("entities/e1")  # nothing done


def test_a_marker_without_statistics_counts_as_a_shard_and_nothing_else():
    totals = StageTotals("documents")
    totals.add({"shard": "part-1"})
    assert totals.num_shards == 1 and totals.num_ok == totals.num_generated_tokens == 0 and totals.hosts == []


def test_run_state_shows_the_curated_folder_the_run_recorded_and_what_this_run_did(tmp_path):
    out = str(tmp_path)
    Layout(out, num_partitions=2).check_version(create=True)  # as every run's first write does
    _commit(out, SYN, ["old"], num_ok=2, num_prompt_tokens=20, num_generated_tokens=10)
    time.sleep(0.01)
    started = time.time()
    _commit(out, SYN, ["new"], 1, num_ok=4, num_failed=1, num_prompt_tokens=200, num_generated_tokens=100)
    _commit(out, "curated/abc123", ["new"], num_ok=3, num_dropped=1)
    write_run_state(out, {"command": "synthesize", "state": "done", "started_at": started,
                          "stages": {schema.SYNTHESIZE: {"expected": 10, "done_before": 2, "wall_s": 5.0,
                                                         "generated_tokens_per_s": 20.0}},
                          "folders": {schema.SYNTHESIZE: SYN, schema.CURATE: "curated/abc123"}})
    state = read_run_state(out)
    assert state["run"]["state"] == "done"
    assert set(state["stages"]) == {"documents", "synthetic", "curated"}
    curated = state["stages"]["curated"]
    assert curated["stage"] == "curated/abc123" and curated["num_ok"] == 3 and curated["num_dropped"] == 1
    assert "this_run" not in curated  # the run planned no curate stage
    synthetic = state["stages"]["synthetic"]
    assert synthetic["num_shards"] == 2 and synthetic["num_ok"] == 6
    assert synthetic["this_run"] == {"expected": 10, "done": 6, "failed": 1, "pending": 4, "num_prompt_tokens": 200,
                                     "num_generated_tokens": 100, "wall_s": 5.0, "generated_tokens_per_s": 20.0}
    assert "estimated_cost_usd" not in synthetic  # no config.yaml: no prices
    config = load_config(None, [f"output_dir={out}", "cost.usd_per_million_prompt_tokens=1",
                                "cost.usd_per_million_generated_tokens=2"])
    storage.write_text(Layout(out).config_url, config.to_yaml())
    priced = read_run_state(out)["stages"]["synthetic"]
    assert priced["estimated_cost_usd"] == pytest.approx((220 * 1 + 110 * 2) / 1e6)


def test_run_state_of_an_empty_folder_is_empty(tmp_path):
    state = read_run_state(str(tmp_path))
    assert state["run"] == {} and set(state["stages"]) == {"documents"}
    assert all(st["num_shards"] == 0 and "this_run" not in st for st in state["stages"].values())


def test_stage_record_keeps_wall_time_and_throughput():
    totals = StageTotals(schema.SYNTHESIZE, num_ok=8, num_generated_tokens=500, expected=10, done_before=2)
    record = stage_record(totals, started=100.0, finished=110.0)
    assert record["wall_s"] == 10.0 and record["generated_tokens_per_s"] == 50.0
    assert (record["expected"], record["done_before"], record["num_ok"]) == (10, 2, 8)


def test_progress_line_shows_counts_rate_and_eta(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(ledger, "time", SimpleNamespace(time=lambda: clock[0]))
    stream = io.StringIO()
    progress = Progress("synthetic", 40, stream=stream)
    clock[0] += 30
    progress.update(9, 1, 600)
    assert stream.getvalue().splitlines()[-1] == (
        "[synthetic] 10/40 requests (25%), 1 failed, 20 generated tok/s, elapsed 30s, ETA 1m30s")
    clock[0] = 1000.0 + 7200
    progress.update(30, 0, 0)
    assert stream.getvalue().splitlines()[-1] == (
        "[synthetic] 40/40 requests (100%), 1 failed, 0 generated tok/s, elapsed 2h00m, ETA 0s")
    progress.start(5)
    assert stream.getvalue().splitlines()[-1] == (
        "[synthetic] 40 requests to do (5 done earlier): starting (the first progress line follows the first commit)")
    Progress("synthetic", 40, stream=stream).done_elsewhere(40, "while extracting")
    assert stream.getvalue().splitlines()[-1] == "[synthetic] 40/40 requests done while extracting: nothing left to run"
    arms = Progress("ablate", 3, unit="arms trained", stream=stream, tokens=False)  # sweep and ablate: no token rate
    clock[0] += 600
    arms.update(1, 0, 0)
    assert stream.getvalue().splitlines()[-1] == "[ablate] 1/3 arms trained (33%), 0 failed, elapsed 10m00s, ETA 20m00s"


def test_progress_lines_are_throttled_and_a_terminal_gets_a_redrawn_bar(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(ledger, "time", SimpleNamespace(time=lambda: clock[0]))
    monkeypatch.delenv("RAY_ENTIGRAPH_PROGRESS", raising=False)
    stream = io.StringIO()
    lines = Progress("synthetic", 100, stream=stream, min_interval_s=10)
    for _ in range(100):  # a commit a second: a line every 10 s, and the last one
        clock[0] += 1
        lines.update(1, 0, 10)
    printed = stream.getvalue().splitlines()
    assert [line.split()[1] for line in printed] == ["1/100", *[f"{n}/100" for n in range(11, 100, 10)], "100/100"]

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    bar = Progress("synthetic", 4, stream=tty)
    for _ in range(4):
        bar.update(1, 0, 10)
    drawn = tty.getvalue()
    assert "\r" in drawn and "4/4" in drawn and "requests" in drawn  # one line redrawn in place, with tqdm's ETA
    assert "\n[synthetic] " not in drawn.rstrip("\n").split("\r")[-1]
    monkeypatch.setenv("RAY_ENTIGRAPH_PROGRESS", "lines")  # forced lines on a terminal
    forced = Terminal()
    Progress("synthetic", 1, stream=forced).update(1, 0, 0)
    assert forced.getvalue().startswith("[synthetic] 1/1 requests (100%)") and "\r" not in forced.getvalue()
