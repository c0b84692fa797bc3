"""The run ledger: what each stage did (requests done and failed, tokens, wall time), read from the commit
markers in storage alone, plus a live progress line with an ETA while a stage runs."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field

from ray_entigraph import schema, storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.context import RunContext
from ray_entigraph.layout import Layout

logger = logging.getLogger(__name__)


@dataclass
class StageTotals:
    stage: str
    num_shards: int = 0
    num_ok: int = 0
    num_failed: int = 0
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_generated_tokens: int = 0
    num_retries: int = 0  # engine transport retries (HTTP engines)
    num_dropped: int = 0  # rows a filter removed (curate), with their reasons in errors/
    busy_s: float = 0.0  # summed model time over units of work (not wall time when actors run in parallel)
    hosts: list[str] = field(default_factory=list)
    node_ids: list[str] = field(default_factory=list)  # Ray node ids (markers written before node_id: none)
    expected: int = 0  # requests the current config asks for (set by the pipeline, not by markers)
    done_before: int = 0  # of those, committed before this invocation started

    def add(self, entry: dict) -> None:
        self.num_shards += 1
        self.num_ok += int(entry.get("num_ok", 0))
        self.num_failed += int(entry.get("num_failed", 0))
        self.num_prompt_tokens += int(entry.get("num_prompt_tokens", 0))
        self.num_cached_tokens += int(entry.get("num_cached_tokens", 0))
        self.num_generated_tokens += int(entry.get("num_generated_tokens", 0))
        self.num_retries += int(entry.get("num_retries", 0))
        self.num_dropped += int(entry.get("num_dropped", 0))
        self.busy_s += float(entry.get("wall_s", 0.0))
        host = entry.get("host")
        if host and host not in self.hosts:
            self.hosts.append(host)
        node_id = entry.get("node_id")
        if node_id and node_id not in self.node_ids:
            self.node_ids.append(node_id)


def stage_totals(output_dir: str, stage: str, since: float | None = None, num_partitions: int = 0) -> StageTotals:
    """Totals over a stage's commit markers (those committed at or after `since`, when given): a partitioned
    stage's from its summary or partition manifests (O(partitions) reads), another's from its markers."""
    totals = StageTotals(stage)
    if stage.split("/")[0] in schema.PARTITIONED_STAGES:
        t = Layout(output_dir, num_partitions=num_partitions).partitioned(stage).totals(since)
        for k in ("num_shards", "num_ok", "num_failed", "num_prompt_tokens", "num_cached_tokens",
                  "num_generated_tokens", "num_retries", "num_dropped"):
            setattr(totals, k, int(t.get(k, 0)))
        totals.busy_s, totals.hosts, totals.node_ids = float(t.get("busy_s", 0.0)), t["hosts"], t["node_ids"]
        return totals
    for entry in storage.StageStore(output_dir, stage).manifest_entries():
        if since is None or entry.get("committed_at", 0) >= since:
            totals.add(entry)
    return totals


def read_run_state(output_dir: str) -> dict:
    """Everything `status` shows, from storage alone (no cluster): per stage, what all committed shards
    hold, and for the last invocation what it expected, did, and has pending. Stage folders that depend on
    the run's settings (judged/<id>, curated/<id>) are read from run.json, where the run recorded them."""
    layout = Layout(output_dir)
    layout.check_version()
    layout = Layout(output_dir, num_partitions=layout.partitions)
    run = json.loads(storage.read_text(layout.run_state_url)) if storage.exists(layout.run_state_url) else {}
    started = run.get("started_at")
    config = _run_config(layout)
    stages = {}
    for name, folder in layout.stage_folders({**_settings_folders(config), **run.get("folders", {})}).items():
        st = asdict(stage_totals(output_dir, folder, num_partitions=layout.partitions))
        planned = run.get("stages", {}).get(name)
        if planned and started:
            now = stage_totals(output_dir, folder, since=started, num_partitions=layout.partitions)
            st["this_run"] = {
                "expected": planned["expected"],
                "done": planned["done_before"] + now.num_ok,
                "failed": now.num_failed,
                "pending": max(planned["expected"] - planned["done_before"] - now.num_ok, 0),
                "num_prompt_tokens": now.num_prompt_tokens,
                "num_generated_tokens": now.num_generated_tokens,
                "wall_s": planned.get("wall_s"),
                "generated_tokens_per_s": planned.get("generated_tokens_per_s"),
            }
        stages[name] = st
    cost = config.cost if config is not None else None
    if cost is not None:
        for st in stages.values():
            st["estimated_cost_usd"] = cost.estimate(st["num_prompt_tokens"], st["num_generated_tokens"])
    return {"output_dir": output_dir, "run": run, "stages": stages}


def _settings_folders(config: EntiGraphConfig | None) -> dict[str, str]:
    """The entities/, synthetic/, judged/ and curated/ folders the run's config names now (a run that has not
    recorded them yet)."""
    if config is None:
        return {}
    ctx = RunContext.resolve(config, list_inputs=False)
    folders = {schema.EXTRACT: ctx.entities_store.stage} if config.synthesis.augmenter == "entigraph" else {}
    folders[schema.SYNTHESIZE] = ctx.synthetic_store.stage
    if not config.curate.enabled:
        return folders
    folders[schema.CURATE] = ctx.curated_stage()
    if config.curate.judge:
        folders[schema.JUDGE] = ctx.judge_stage
    return folders


def _run_config(layout: Layout):
    """The run's own resolved config (its prices), if it has one this version can read."""
    try:
        return layout.saved_config()
    except Exception:  # noqa: BLE001 - a config from another version: show less rather than fail status
        return None


def write_run_state(output_dir: str, run: dict) -> None:
    storage.write_text(Layout(output_dir).run_state_url, json.dumps(run, indent=2, sort_keys=True, default=str))


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def stage_record(totals: StageTotals, started: float, finished: float | None) -> dict:
    """What run.json keeps per stage of an invocation."""
    wall = (finished or time.time()) - started
    return {
        "expected": totals.expected, "done_before": totals.done_before, "num_ok": totals.num_ok,
        "num_failed": totals.num_failed, "num_prompt_tokens": totals.num_prompt_tokens,
        "num_generated_tokens": totals.num_generated_tokens, "started_at": started, "finished_at": finished,
        "wall_s": round(wall, 2),
        # a rate only where this invocation did work (a stage found complete reports its stored totals)
        "generated_tokens_per_s": (round(totals.num_generated_tokens / wall, 2)
                                   if wall > 0 and totals.done_before < totals.expected else None),
    }


class Progress:
    """Progress with an ETA per committed unit of work (done/total, tokens/s): on a terminal a bar redrawn in
    place (tqdm); elsewhere (`ray job logs`, a file, a pipe) a line per update, at most one every
    `min_interval_s` seconds apart from the first and the last. RAY_ENTIGRAPH_PROGRESS=lines forces lines."""

    def __init__(self, stage: str, total: int, unit: str = "requests", stream=None, tokens: bool = True,
                 min_interval_s: float = 10.0, bar: bool | None = None):
        self.stage, self.total, self.unit = stage, max(total, 0), unit
        self.tokens = tokens  # False: a count of whole pieces (the arms of `sweep` and `ablate`), no token rate
        self.done = 0
        self.failed = 0
        self.generated = 0
        self.started = time.time()
        self.stream = stream or sys.stderr
        self.min_interval_s = min_interval_s
        self.printed_at: float | None = None
        if bar is None:
            bar = (os.environ.get("RAY_ENTIGRAPH_PROGRESS", "auto") != "lines"
                   and bool(getattr(self.stream, "isatty", lambda: False)()))
        self.bar = None
        if bar:
            from tqdm import tqdm  # lazy: only a terminal draws a bar

            self.bar = tqdm(total=self.total, desc=f"[{stage}]", unit=f" {unit}", file=self.stream,
                            dynamic_ncols=True, mininterval=0.5, leave=True)

    def start(self, done_before: int = 0) -> None:
        """The line printed before any work commits: what is to do, so that a stage whose actors are still
        loading their model does not look stuck."""
        earlier = f" ({done_before} done earlier)" if done_before else ""
        line = (f"[{self.stage}] {self.total} {self.unit} to do{earlier}: starting (the first progress line "
                "follows the first commit)")
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def done_elsewhere(self, done: int, where: str) -> None:
        """The one line of a stage whose work another stage did (synthesis streamed behind extraction)."""
        line = f"[{self.stage}] {done}/{self.total} {self.unit} done {where}: nothing left to run"
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
            self.bar.close()
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """The bar's last redraw (a stage that ends short of its total: failures, a stop)."""
        if self.bar is not None:
            self.bar.close()

    def update(self, num_ok: int, num_failed: int, num_generated_tokens: int) -> None:
        self.done += num_ok + num_failed
        self.failed += num_failed
        self.generated += num_generated_tokens
        now = time.time()
        elapsed = now - self.started
        tok_s = self.generated / elapsed if elapsed > 0 else 0.0
        if self.bar is not None:
            postfix = {"failed": self.failed, **({"tok/s": f"{tok_s:.0f}"} if self.tokens else {})}
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(num_ok + num_failed)
            if self.done >= self.total:
                self.bar.close()
            return
        last = self.done >= self.total
        if self.printed_at is not None and not last and now - self.printed_at < self.min_interval_s:
            return  # throttled: a million small commits do not print a million lines
        self.printed_at = now
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 and self.total > self.done else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = f"{tok_s:.0f} generated tok/s, " if self.tokens else ""
        print(
            f"[{self.stage}] {self.done}/{self.total} {self.unit} ({pct:.0f}%), {self.failed} failed, "
            f"{rate}elapsed {format_duration(elapsed)}, ETA {format_duration(eta)}",
            file=self.stream,
            flush=True,
        )
