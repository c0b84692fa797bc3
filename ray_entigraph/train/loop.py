"""The training loop that runs on every Ray Train worker. One straight line: load or resume, then
step / log / checkpoint, then export. Side concerns (metrics, checkpoints, export) are small helpers.

Data order is a pure function of (mixture, seed, step): the mixed stream is read in order in epoch 0 and in
a seeded reshuffle in later epochs; global step s covers stream positions [s*B, (s+1)*B), and rank r takes
every world-th of them. A resumed run therefore continues the same data order from its checkpoint's step.
"""

from __future__ import annotations

import functools
import json
import os
import random
import tempfile
import time

import numpy as np

from ray_entigraph import storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.engines.bundled import resolve_model_path
from ray_entigraph.engines.hf import load_tokenizer
from ray_entigraph.layout import base_model_name, train_url
from ray_entigraph.train.data import load_blocks
from ray_entigraph.train.schedule import accumulation_steps, warmup_cosine

STATE_FILE = "training_state.pt"


@functools.lru_cache(maxsize=4)
def _epoch_order(length: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(length))
    if epoch:
        random.Random(seed * 1000003 + epoch).shuffle(order)
    return tuple(order)


def stream_item(stream: list[tuple[str, int]], position: int, seed: int) -> tuple[str, int]:
    """The (source, block) at a global position of the epoch-concatenated stream: epoch 0 in stream order,
    later epochs in a seeded reshuffle (computed once per epoch)."""
    epoch, offset = divmod(position, len(stream))
    return stream[_epoch_order(len(stream), seed, epoch)[offset]]


def total_steps(config: EntiGraphConfig, stream_len: int) -> int:
    steps = config.train.epochs * stream_len // config.train.global_batch_size
    return min(steps, config.train.max_steps) if config.train.max_steps else steps


def _unwrap(model):
    return getattr(model, "module", model)


def _full_state_dict(model, strategy: str) -> dict:
    if strategy == "fsdp":
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType  # lazy: torch loads on the workers only
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        full = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, full):
            return model.state_dict()
    return _unwrap(model).state_dict()


def train_loop_per_worker(loop_config: dict) -> None:  # noqa: C901 - the loop is meant to be read top to bottom
    import ray.train  # lazy: Ray Train, torch and transformers load on the training workers only
    import ray.train.torch
    import torch
    import torch.distributed as dist
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()
    config = EntiGraphConfig.model_validate_json(loop_config["config_json"])
    tc = config.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if not tc.use_gpu:
        torch.set_num_threads(tc.torch_threads or max((os.cpu_count() or 1) // max(ctx.get_local_world_size(), 1), 1))
    seed = tc.effective_seed(config.seed)
    torch.manual_seed(seed)

    # data: the mixed stream and every source's blocks
    stream = [tuple(x) for x in json.loads(storage.read_text(train_url(config, "mixture.json")))["stream"]]
    files = loop_config["block_files"]  # resolved once on the driver (train.data.block_files)
    blocks = {src: torch.from_numpy(load_blocks(files[src], tc.block_len).astype(np.int64))
              for src in sorted({s for s, _ in stream})}
    steps = total_steps(config, len(stream))
    accum = accumulation_steps(tc.global_batch_size, tc.micro_batch_size, world)

    # model and optimizer
    path = resolve_model_path(base_model_name(config), config.model.cache_dir)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.use_cache = False
    num_params = sum(p.numel() for p in model.parameters())
    model = ray.train.torch.prepare_model(model, parallel_strategy=tc.strategy)
    device = ray.train.torch.get_device()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr)
    warmup = max(1, round(tc.warmup_ratio * steps)) if tc.warmup_ratio > 0 else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps=steps, warmup_steps=warmup, min_ratio=tc.min_lr_ratio))

    # resume
    start_step, metrics_lines = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            state = torch.load(os.path.join(ckpt_dir, STATE_FILE), map_location="cpu", weights_only=False)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        random.setstate(state["rng_python"])
        np.random.set_state(state["rng_numpy"])
        start_step = state["step"]
        metrics_lines = [m for m in state["metrics"] if m["step"] <= start_step]  # steps are 1-based
    metrics_url = train_url(config, "metrics.jsonl")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if tc.use_gpu and tc.dtype == "bfloat16" else _null()

    model.train()
    for step in range(start_step, steps):
        t0 = time.time()
        positions = range(step * tc.global_batch_size, (step + 1) * tc.global_batch_size)
        mine = [stream_item(stream, p, seed) for p in positions][rank::world]
        # on the device: NCCL (GPU workers) only takes CUDA tensors
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss-sum and tokens, synthetic then replay
        for micro in range(accum):
            items = mine[micro * tc.micro_batch_size:(micro + 1) * tc.micro_batch_size]
            input_ids = torch.stack([blocks[src][i] for src, i in items]).to(device)
            sync = micro == accum - 1 or not hasattr(model, "no_sync")
            with (model.no_sync() if not sync else _null()), autocast:
                logits = model(input_ids=input_ids).logits.float()
                per_token = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.size(-1)), input_ids[:, 1:].reshape(-1), reduction="none"
                ).view(input_ids.size(0), -1)
                loss = per_token.mean() / accum
                loss.backward()
            for row, (src, _) in enumerate(items):
                k = 0 if src == "synthetic" else 2
                sums[k] += per_token[row].sum().item()
                sums[k + 1] += per_token.size(1)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        lr = scheduler.get_last_lr()[0]  # the rate this step used
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if dist.is_initialized():
            dist.all_reduce(sums)
        elapsed = time.time() - t0
        tokens = tc.global_batch_size * tc.block_len
        line = {
            "step": step + 1, "loss": float((sums[0] + sums[2]) / max(sums[1] + sums[3], 1)),
            "loss_synthetic": float(sums[0] / sums[1]) if sums[1] else None,
            "loss_replay": float(sums[2] / sums[3]) if sums[3] else None,
            "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tokens / elapsed,
            "step_s": elapsed, "peak_rss_mb": _peak_rss_mb(),
        }
        if tc.use_gpu:  # model FLOPs utilisation: 6 N FLOPs per trained token over the GPUs' peak
            line["mfu"] = 6 * num_params * line["tokens_per_s"] / (world * tc.peak_tflops_per_gpu * 1e12)
        metrics_lines.append(line)
        if rank == 0 and ((step + 1) % tc.log_every == 0 or step + 1 == steps):
            storage.write_text(metrics_url, "".join(json.dumps(m) + "\n" for m in metrics_lines))
            print(f"[train] step {step + 1}/{steps} loss {line['loss']:.4f} lr {line['lr']:.2e} "
                  f"{line['tokens_per_s']:.0f} tok/s", flush=True)
        if (step + 1) % tc.checkpoint_every == 0 or step + 1 == steps:
            _save_checkpoint(model, optimizer, scheduler, step + 1, metrics_lines, line, rank, tc.strategy)

    state = _full_state_dict(model, tc.strategy)  # collective under FSDP: every rank takes part
    if rank == 0:
        _export(state, load_tokenizer(path), config)


def _save_checkpoint(model, optimizer, scheduler, step, metrics_lines, line, rank, strategy) -> None:
    import ray.train  # lazy: Ray Train and torch load on the training workers only
    import torch

    state_dict = _full_state_dict(model, strategy)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            torch.save({
                "model": state_dict, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "metrics": metrics_lines, "rng_torch": torch.get_rng_state(),
                "rng_python": random.getstate(), "rng_numpy": np.random.get_state(),
            }, os.path.join(tmp, STATE_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({k: v for k, v in line.items() if v is not None}, checkpoint=checkpoint,
                         checkpoint_dir_name=f"checkpoint-step-{step:08d}")


def _export(state: dict, tokenizer, config: EntiGraphConfig) -> None:
    """Hugging Face format (weights, config, tokenizer, chat template) that transformers and vLLM load."""
    from transformers import AutoModelForCausalLM  # lazy: transformers loads on the training workers only

    fresh = AutoModelForCausalLM.from_pretrained(resolve_model_path(base_model_name(config), config.model.cache_dir))
    fresh.load_state_dict(state)
    with tempfile.TemporaryDirectory() as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        storage.put_dir(tmp, train_url(config, "model"))


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
