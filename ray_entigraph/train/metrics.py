"""Training metrics: appended, never rewritten.

Rank 0 keeps the lines of the steps since its last flush and writes them as one new object,
`<train folder>/metrics/step-<first step>.jsonl`, at every `log_every` boundary, at every checkpoint and at
the end; nothing already written is uploaded again (the old single `metrics.jsonl`, rewritten whole at every
step, uploaded O(steps^2) bytes). Flush points are a pure function of the step and the config, so a run
resumed from a checkpoint writes the same segment names as the run it continues and replaces the segments the
dead run wrote past its checkpoint. At the end, `metrics.jsonl` (every step once) is written once for tools
that want one file.
"""

from __future__ import annotations

import json

from ray_entigraph import storage

SEGMENTS = "metrics"


class MetricsLog:
    def __init__(self, folder_url: str, *, enabled: bool):
        self.folder = folder_url
        self.enabled = enabled
        self.pending: list[dict] = []

    def append(self, line: dict) -> None:
        self.pending.append(line)

    def flush(self) -> None:
        if self.enabled and self.pending:
            name = f"step-{self.pending[0]['step']:08d}.jsonl"
            storage.write_text(storage.join(self.folder, SEGMENTS, name),
                               "".join(json.dumps(m) + "\n" for m in self.pending))
        self.pending = []

    def finish(self, steps: int) -> None:
        """Flush, then write the whole trajectory (steps 1..steps) as `metrics.jsonl`, once."""
        self.flush()
        if self.enabled:
            lines = read_metrics(self.folder, upto=steps)
            storage.write_text(storage.join(self.folder, "metrics.jsonl"), "".join(json.dumps(m) + "\n" for m in lines))


def read_metrics(folder_url: str, *, upto: int | None = None) -> list[dict]:
    """Every step's line once, in step order, from the appended segments (a later segment wins for a step
    it repeats: it was written by the run that resumed). Falls back to `metrics.jsonl` alone."""
    urls = sorted(storage.list_files(storage.join(folder_url, SEGMENTS), suffix=".jsonl"))
    if not urls:
        whole = storage.join(folder_url, "metrics.jsonl")
        urls = [whole] if storage.exists(whole) else []
    by_step: dict[int, dict] = {}
    for url in urls:
        for text in storage.read_text(url).splitlines():
            if text.strip():
                line = json.loads(text)
                by_step[int(line["step"])] = line
    return [by_step[s] for s in sorted(by_step) if upto is None or s <= upto]
