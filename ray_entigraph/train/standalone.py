"""Run the training loop under `torchrun`, without Ray: the same `run_training` Ray Train launches, with the
checkpoints in a folder instead of Ray Train's storage.

    torchrun --nproc-per-node 8 -m ray_entigraph.train.standalone --config run.yaml \
        --blocks blocks.json --checkpoints /shared/ckpt [key=value ...]

`--blocks`: a JSON object source -> [[parquet url, rows], ...] (what `train.data.block_files` returns; the
`mixture.json` of the config's training folder must exist). Used where a machine has PyTorch but not Ray
(and by the tests, to compare strategies without starting Ray).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from typing import Iterator

from ray_entigraph import storage
from ray_entigraph.config import load_config
from ray_entigraph.train import dist
from ray_entigraph.train.loop import run_training

COMPLETE = "_complete"


class FolderCheckpoints:
    """`<folder>/checkpoint-step-<step>/`: every rank uploads its own files, then rank 0 marks the folder
    complete; the latest complete one is resumed."""

    def __init__(self, url: str, d: dist.Dist):
        self.url, self.d = url, d

    @contextlib.contextmanager
    def _latest(self) -> Iterator[str | None]:
        fs, path = storage.filesystem(self.url)
        try:
            names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
        except FileNotFoundError:
            names = []
        done = [n for n in names if n.startswith("checkpoint-step-")
                and storage.exists(storage.join(self.url, n, COMPLETE))]
        if not done:
            yield None
        elif storage.is_local(self.url):
            yield storage.join(self.url, done[-1])
        else:
            with tempfile.TemporaryDirectory() as tmp:
                storage.get_dir(storage.join(self.url, done[-1]), tmp)
                yield tmp

    def latest(self) -> contextlib.AbstractContextManager[str | None]:
        return self._latest()

    def save(self, local_dir: str, step: int, line: dict) -> None:
        target = storage.join(self.url, f"checkpoint-step-{step:08d}")
        storage.put_dir(local_dir, target)
        self.d.barrier()
        if self.d.rank == 0:
            storage.write_text(storage.join(target, COMPLETE), json.dumps(line))
        self.d.barrier()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="ray_entigraph.train.standalone", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None)
    ap.add_argument("--blocks", required=True, help="JSON file: source -> [[parquet url, rows], ...]")
    ap.add_argument("--checkpoints", required=True, help="folder (local or object storage) for checkpoints")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    config = load_config(args.config, args.overrides)
    with open(args.blocks) as f:
        blocks = json.load(f)
    d = dist.init_from_env(config.train.use_gpu)
    run_training(config, blocks, d, FolderCheckpoints(args.checkpoints, d),
                 local_world=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    dist.shutdown()  # on success only: after a failure, torchrun stops the other ranks


if __name__ == "__main__":
    main()
