"""The bundled SmolLM2-135M-Instruct weights end to end through the real CLI, local Ray, local storage."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ray_entigraph import schema
from ray_entigraph.config import load_config
from ray_entigraph.prompts import load_prompt_set, render
from tests import stores

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_cli_synthesize_with_bundled_model(tmp_path, small_corpus):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "ray_entigraph", "synthesize", "-v", "--config", "configs/demo.yaml",
        f"input.path={small_corpus}", f"output_dir={out}", "plan.max_pairs_per_doc=3", "plan.max_triplets_per_doc=1",
        "synthesis.sampling.max_new_tokens=64", "extract.max_attempts=1",
    ]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the summary prints the counts, the measured parse rate and where the output is
    assert "ray-entigraph synthesize: done" in proc.stdout
    assert "model output parsed for" in proc.stdout and f"{out}/synthetic" in proc.stdout
    assert "ETA" in proc.stderr  # progress lines
    # -v after the subcommand reaches the model actor: its INFO line (not shown at the default WARNING level)
    # comes back through Ray's log forwarding
    ready = "transformers engine ready for bundled:smollm2-135m-instruct"  # (only model actors build an engine)
    assert ready in proc.stdout + proc.stderr, proc.stderr[-3000:]

    rows = stores.rows(out, schema.SYNTHESIZE)
    relations = [r for r in rows if r["kind"] in ("pair", "triplet")]
    assert len(relations) == 2 * (3 + 1)
    prompts = load_prompt_set(load_config("demo").synthesis.prompts)  # the demo preset's prompt set
    mentions_other = 0
    for r in relations:
        assert r["model"] == "bundled:smollm2-135m-instruct" and r["num_generated_tokens"] > 0
        template = prompts.pair if r["kind"] == "pair" else prompts.triplet
        values = {"title": r["title"], **{f"entity_{i + 1}": e for i, e in enumerate(r["entities"])}}
        prefix = render(template.response_prefix, values)
        assert r["text"].startswith(prefix)  # the section heading names the entities and the title
        generated = r["text"][len(prefix):]
        assert len(generated.split()) >= 5  # a real continuation, not an empty or stub string
        mentions_other += any(e.lower() in generated.lower() for e in r["entities"])
    # the model writes about the entities it was asked about, not only because the prefix names them
    assert mentions_other >= 1
    ents = stores.rows(out, schema.EXTRACT)
    assert all(len(e["entities"]) >= 2 and all(x.lower() in e["text"].lower() for x in e["entities"]) for e in ents)
