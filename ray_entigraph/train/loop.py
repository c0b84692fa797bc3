"""The training loop. `run_training` is plain PyTorch: load or resume, then step / log / checkpoint, then
export. It runs under Ray Train (`train_loop_per_worker`, the thin adapter Ray Train launches) and under
`torchrun` without Ray (`train/standalone.py`); only where checkpoints are kept differs (`Checkpoints`).
Every collective, the sharding and the state dicts go through `train/dist.py`.

Data order is a pure function of (mixture spec, seed, step): each epoch is a fresh seeded draw of the
mixture (train/mix.py); global step s covers stream positions [s*B, (s+1)*B), and rank r takes every
world-th of them. A resumed run therefore continues the same data order from its checkpoint's step, on any
number of workers that divides the batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import time
from typing import Iterator, Protocol

import numpy as np

from ray_entigraph import storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.engines.bundled import resolve_model_path
from ray_entigraph.engines.hf import load_tokenizer
from ray_entigraph.errors import ConfigError
from ray_entigraph.layout import base_model_name, train_url
from ray_entigraph.ledger import format_duration
from ray_entigraph.train import dist
from ray_entigraph.train.data import BlockReader
from ray_entigraph.train.metrics import MetricsLog
from ray_entigraph.train.mix import SYNTHETIC, MixSpec, is_replay, stream_item, synthetic_subset
from ray_entigraph.train.schedule import accumulation_steps, decay_groups, total_steps, warmup_cosine
from ray_entigraph.train.trackers import Trackers

STATE_DIR = "state"  # model and optimizer, sharded (torch.distributed.checkpoint)
TRAIN_STATE = "train_state.pt"  # step, scheduler, RNG: tensors and plain values, loaded with weights_only=True
OLD_STATE_FILE = "training_state.pt"  # checkpoints of versions before sharded checkpoints


class Checkpoints(Protocol):
    """Where a run's checkpoints live: Ray Train's storage, or a folder when run under torchrun."""

    def latest(self) -> contextlib.AbstractContextManager[str | None]: ...

    def save(self, local_dir: str, step: int, line: dict) -> None: ...


class RayTrainCheckpoints:
    """Ray Train's checkpoints: every rank reports its own shard files, Ray Train merges them into one
    folder in the run's storage and hands the latest back on restart."""

    def latest(self) -> contextlib.AbstractContextManager[str | None]:
        import ray.train  # lazy: Ray Train only on its workers

        checkpoint = ray.train.get_checkpoint()
        return checkpoint.as_directory() if checkpoint else contextlib.nullcontext(None)

    def save(self, local_dir: str, step: int, line: dict) -> None:
        import ray.train  # lazy: Ray Train only on its workers

        ray.train.report({k: v for k, v in line.items() if v is not None},
                         checkpoint=ray.train.Checkpoint.from_directory(local_dir),
                         checkpoint_dir_name=f"checkpoint-step-{step:08d}")


def train_loop_per_worker(loop_config: dict) -> None:
    """What Ray Train runs on every worker (it has created the process group)."""
    import ray  # lazy: Ray Train, torch and transformers load on the training workers only
    import ray.train

    config = EntiGraphConfig.model_validate_json(loop_config["config_json"])
    import ray.train.torch

    # Ray Train's device: it sets CUDA_VISIBLE_DEVICES, so LOCAL_RANK need not index the visible GPUs
    d = dist.current(config.train.use_gpu, ray.train.torch.get_device() if config.train.use_gpu else None)
    run_training(config, loop_config["block_files"], d, RayTrainCheckpoints(),
                 local_world=ray.train.get_context().get_local_world_size(),
                 node_id=ray.get_runtime_context().get_node_id())


def record_worker(config: EntiGraphConfig, d: dist.Dist, node_id: str = "", **extra) -> None:
    """Where this rank runs (`<train folder>/workers/rank-<r>.json`: host, Ray node, pid, device), written at
    the start and, with the step it resumed from, what it read and its memory, at the end; rewritten when the
    workers restart: which nodes a training used is on storage, not only in Ray's logs."""
    import socket

    storage.write_text(train_url(config, "workers", f"rank-{d.rank:05d}.json"), json.dumps({
        "rank": d.rank, "world": d.world, "host": socket.gethostname(), "node_id": node_id, "pid": os.getpid(),
        "device": str(d.device), "time": time.time(), **extra}))


def rss_anon_mb() -> float:
    """This process's anonymous resident memory (its own heap, not mapped file pages), in MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return _peak_rss_mb()


@contextlib.contextmanager
def _params_on_meta() -> Iterator[None]:
    """Build a model whose parameters are on the meta device (no memory, no init) and whose buffers are real
    (rotary frequencies are computed, not loaded): ranks other than 0 build the model this way."""
    import torch

    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register  # type: ignore[method-assign]


def build_model(path: str, config: EntiGraphConfig, d: dist.Dist):
    """The model, wrapped for data parallel training. FSDP: rank 0 alone reads the weights; the others
    build on the meta device; after sharding rank 0 broadcasts and each rank keeps its shard."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tc = config.train
    compute = torch.bfloat16 if tc.dtype == "bfloat16" else None
    if tc.strategy != "fsdp":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.config.use_cache = False
        return dist.shard_model(model, "ddp", d, compute_dtype=compute,
                                activation_checkpointing=tc.activation_checkpointing)
    full = None
    if d.rank == 0:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        full = model.state_dict()
    else:
        with _params_on_meta():
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    model.config.use_cache = False
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    model = dist.shard_model(model, "fsdp", d, compute_dtype=compute,
                             activation_checkpointing=tc.activation_checkpointing)
    model.to_empty(device=d.device)
    with torch.no_grad():
        for name, b in buffers.items():
            model.get_buffer(name).copy_(b)
    dist.load_full_into(model, full)
    return model


def run_training(config: EntiGraphConfig, block_files: dict, d: dist.Dist, checkpoints: Checkpoints, *,
                 local_world: int = 1, node_id: str = "") -> None:  # noqa: C901 - read top to bottom
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    tc = config.train
    if not tc.use_gpu:
        torch.set_num_threads(tc.torch_threads or max((os.cpu_count() or 1) // max(local_world, 1), 1))
    seed = tc.effective_seed(config.seed)
    torch.manual_seed(seed)

    # data: the mixed stream, and a reader per source that fetches only this rank's blocks (int32; widened
    # per micro-batch), the next step's in the background
    record_worker(config, d, node_id)
    mixture = json.loads(storage.read_text(train_url(config, "mixture.json")))
    spec = MixSpec.from_json(mixture["spec"])  # the stream is derived here, epoch by epoch (train/mix.py)
    chosen = synthetic_subset(int(mixture["counts"].get(SYNTHETIC, 0)), tc.max_synthetic_tokens, tc.block_len, seed)
    readers = {src: BlockReader(block_files[src], tc.block_len) for src in spec.sources if src in block_files}
    steps = total_steps(config, spec.epoch_length)
    accum = accumulation_steps(tc.global_batch_size, tc.micro_batch_size, d.world)

    def rank_items(step: int) -> list[tuple[str, int]]:
        positions = range(step * tc.global_batch_size + d.rank, (step + 1) * tc.global_batch_size, d.world)
        items = [stream_item(spec, p) for p in positions]
        return [(src, chosen[i]) if chosen is not None and src == SYNTHETIC else (src, i) for src, i in items]

    # model and optimizer
    path = resolve_model_path(base_model_name(config), config.model.cache_dir)
    model = build_model(path, config, d)
    num_params = sum(p.numel() for p in model.parameters()) * (d.world if tc.strategy == "fsdp" else 1)
    optimizer = torch.optim.AdamW(decay_groups(dist.unwrap(model), tc.weight_decay), lr=tc.lr)
    warmup = max(1, round(tc.warmup_ratio * steps)) if tc.warmup_ratio > 0 else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps=steps, warmup_steps=warmup, min_ratio=tc.min_lr_ratio))

    # resume
    start_step = 0
    with checkpoints.latest() as ckpt_dir:
        if ckpt_dir:
            start_step = _restore(ckpt_dir, model, optimizer, scheduler)
    if start_step and d.rank == 0:
        print(f"[train] resumed from the step-{start_step} checkpoint: steps {start_step + 1} to {steps} left",
              flush=True)
    metrics = MetricsLog(train_url(config), enabled=d.rank == 0)
    trackers = Trackers(config, enabled=d.rank == 0)
    ddp_bf16 = tc.use_gpu and tc.dtype == "bfloat16" and tc.strategy != "fsdp"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if ddp_bf16 else contextlib.nullcontext()

    model.train()
    rss_start = rss_anon_mb()
    pace: list[float] = []  # seconds per step, for the ETA
    for step in range(start_step, steps):
        t0 = time.time()
        mine = rank_items(step)
        for src, i in (rank_items(step + 1) if step + 1 < steps else []):
            readers[src].prefetch([i])
        sums = torch.zeros(4, dtype=torch.float64)  # loss-sum and tokens, synthetic then replay
        for micro in range(accum):
            items = mine[micro * tc.micro_batch_size:(micro + 1) * tc.micro_batch_size]
            input_ids = torch.from_numpy(np.stack([readers[src].get(i) for src, i in items])).to(
                d.device, dtype=torch.long)
            with dist.maybe_no_sync(model, sync=micro == accum - 1), autocast:
                logits = model(input_ids=input_ids).logits.float()
                per_token = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.size(-1)), input_ids[:, 1:].reshape(-1), reduction="none"
                ).view(input_ids.size(0), -1)
                (per_token.mean() / accum).backward()
            row_sums = per_token.detach().sum(dim=1).double().cpu()
            for row, (src, _) in enumerate(items):
                k = 2 if is_replay(src) else 0
                sums[k] += row_sums[row]
                sums[k + 1] += per_token.size(1)
        grad_norm = dist.clip_grad_norm(model.parameters(), tc.grad_clip, d)
        lr = scheduler.get_last_lr()[0]  # the rate this step used
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        sums = d.all_reduce_sum(sums)  # reduced on the backend's device (NCCL: CUDA only), returned on the CPU
        elapsed = time.time() - t0
        tokens = tc.global_batch_size * tc.block_len
        line = {
            "step": step + 1, "loss": float((sums[0] + sums[2]) / max(sums[1] + sums[3], 1)),
            "loss_synthetic": float(sums[0] / sums[1]) if sums[1] else None,
            "loss_replay": float(sums[2] / sums[3]) if sums[3] else None,
            "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tokens / elapsed,
            "step_s": elapsed, "peak_rss_mb": _peak_rss_mb(), "rss_anon_mb": rss_anon_mb(),
            "block_bytes_read": sum(r.bytes_read for r in readers.values()),  # rank 0's
        }
        if tc.use_gpu:  # model FLOPs utilisation: 6 N FLOPs per trained token over the GPUs' peak
            line["mfu"] = 6 * num_params * line["tokens_per_s"] / (d.world * tc.peak_tflops_per_gpu * 1e12)
        metrics.append(line)
        pace.append(elapsed)
        trackers.log(line)
        if (step + 1) % tc.log_every == 0 or step + 1 == steps:
            metrics.flush()
            if d.rank == 0:
                recent = pace[-10:]  # the pace of the last steps: the first steps' warm-up does not skew the ETA
                eta = format_duration((steps - step - 1) * sum(recent) / len(recent))
                print(f"[train] step {step + 1}/{steps} loss {line['loss']:.4f} lr {line['lr']:.2e} "
                      f"{line['tokens_per_s']:.0f} tok/s, ETA {eta}", flush=True)
        if (step + 1) % tc.checkpoint_every == 0 or step + 1 == steps:
            metrics.flush()  # a resumed run starts after this step: its lines must be on storage
            trackers.flush()
            _save(checkpoints, model, optimizer, scheduler, step + 1, line, d)

    metrics.finish(steps)
    trackers.close()
    record_worker(config, d, node_id, finished=True, resumed_from_step=start_step,
                  block_bytes_read=sum(r.bytes_read for r in readers.values()),
                  rss_anon_start_mb=rss_start, rss_anon_end_mb=rss_anon_mb())
    state = dist.full_state_dict(model)  # collective under FSDP: every rank takes part
    if d.rank == 0:
        _export(state, path, load_tokenizer(path), config)


def _save(checkpoints: Checkpoints, model, optimizer, scheduler, step: int, line: dict, d: dist.Dist) -> None:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        dist.save_sharded(os.path.join(tmp, STATE_DIR), model, optimizer)  # every rank writes its shards
        if d.rank == 0:
            torch.save({"step": step, "scheduler": scheduler.state_dict(), "rng_torch": torch.get_rng_state(),
                        "rng_python": list(random.getstate()[1]), "world": d.world},
                       os.path.join(tmp, TRAIN_STATE))
        checkpoints.save(tmp, step, line)


def _restore(ckpt_dir: str, model, optimizer, scheduler) -> int:
    import torch

    state_file = os.path.join(ckpt_dir, TRAIN_STATE)
    if not os.path.exists(state_file):
        old = os.path.exists(os.path.join(ckpt_dir, OLD_STATE_FILE))
        raise ConfigError(
            f"The checkpoint {ckpt_dir} " + ("was written by an older version (one unsharded file), which this "
                                             "version does not resume" if old else f"has no {TRAIN_STATE}") +
            ". Fix: set train.name to a new folder, or delete the training folder to train from scratch.")
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    dist.load_sharded(os.path.join(ckpt_dir, STATE_DIR), model, optimizer)
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_torch"])
    random.setstate((3, tuple(state["rng_python"]), None))
    return int(state["step"])


def _export(state: dict, path: str, tokenizer, config: EntiGraphConfig) -> None:
    """Hugging Face format (safetensors shards of at most 5 GB, config, tokenizer, chat template) that
    transformers and vLLM load. The gathered weights are assigned into a model built on the meta device, so
    the base model is not loaded a second time."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with _params_on_meta():
        fresh = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    fresh.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, assign=True, strict=False)
    fresh.tie_weights()
    missing = [n for n, p in fresh.named_parameters() if p.device.type == "meta"]
    if missing:
        raise RuntimeError(f"export: weights missing from the gathered state: {missing[:5]}")
    with tempfile.TemporaryDirectory() as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True, max_shard_size="5GB")
        tokenizer.save_pretrained(tmp)
        storage.put_dir(tmp, train_url(config, "model"))


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

