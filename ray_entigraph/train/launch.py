"""Launching continued pretraining: pack, mix, train on Ray Train, export, plot. The one home of Ray Train's
trainer API; the loop itself is in `loop.py`.

Re-running the same command after a crash resumes from the latest complete checkpoint: Ray Train keeps a
snapshot of its checkpoints under <output_dir>/train/ray/train, and the loop restores model, optimizer,
scheduler, data position and RNG from it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field

from ray_entigraph import schema, storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.context import RunContext
from ray_entigraph.errors import ConfigError
from ray_entigraph.layout import Layout, base_model_name, train_url
from ray_entigraph.lease import fenced_layout, lease_for
from ray_entigraph.runtime import init_ray, save_resolved_config
from ray_entigraph.train.data import block_files, run_pack
from ray_entigraph.train.loop import train_loop_per_worker
from ray_entigraph.train.metrics import read_metrics
from ray_entigraph.train.mix import MixSpec, realised_shares, synthetic_subset
from ray_entigraph.train.trackers import check_available as check_trackers

logger = logging.getLogger(__name__)


@dataclass
class TrainSummary:
    steps: int
    blocks: dict
    realised_replay_share: float
    synthetic_tokens_used: int
    final_loss: float | None
    mean_tokens_per_s: float
    model_url: str
    metrics_url: str
    plot_url: str | None
    wall_s: float
    realised_shares: dict = field(default_factory=dict)  # with train.streams: each source's token share

    def lines(self) -> list[str]:
        return [
            f"blocks           {', '.join(f'{k}: {v}' for k, v in sorted(self.blocks.items()))}",
            f"corpus tokens    {self.synthetic_tokens_used} trained on per epoch (whole blocks)",
            f"replay share     {self.realised_replay_share:.2%} of the training stream (realised)",
            *([f"token shares     {', '.join(f'{k} {v:.2%}' for k, v in self.realised_shares.items())} (realised)"]
              if self.realised_shares else []),
            f"steps            {self.steps}, "
            f"final loss {self.final_loss if self.final_loss is None else round(self.final_loss, 4)}",
            f"throughput       {self.mean_tokens_per_s:.0f} training tokens/s (mean over steps)",
            f"model            {self.model_url}  (Hugging Face format)",
            f"metrics          {self.metrics_url}" + (f"  plot: {self.plot_url}" if self.plot_url else ""),
        ]


def build_mixture(config: EntiGraphConfig, counts: dict[str, int]) -> dict:
    """mixture.json: the spec every rank derives the stream from (train/mix.py), the block counts, and what
    it realises. Nothing in it grows with the number of blocks."""
    tc = config.train
    seed = tc.effective_seed(config.seed)
    available = counts.get(schema.SYNTHETIC_SOURCE, 0)
    chosen = synthetic_subset(available, tc.max_synthetic_tokens, tc.block_len, seed)
    used = available if chosen is None else len(chosen)
    streams = {name: counts.get(name, 0) for name in tc.streams}
    spec = MixSpec(0 if streams else used, {r.name: counts.get(schema.REPLAY_PREFIX + r.name, 0) for r in tc.replay},
                   {r.name: r.weight for r in tc.replay}, tc.replay_share if tc.replay else 0.0, tc.replay_mode, seed,
                   streams, dict(tc.streams))
    if streams:
        used = sum(spec.main_counts.values())
    if spec.epoch_length < tc.global_batch_size:
        raise ConfigError(
            f"The training stream has {spec.epoch_length} blocks, fewer than train.global_batch_size "
            f"({tc.global_batch_size}). Fix: synthesize more text, lower train.block_len, or lower the batch size.")
    share = spec.num_replay / max(spec.epoch_length, 1)
    logger.info("replay share realised: %.4f (configured %.4f, mode %s)", share, tc.replay_share, tc.replay_mode)
    return {"format": 2, "spec": spec.to_json(), "epoch_length": spec.epoch_length, "counts": counts,
            "realised_replay_share": share, "mode": tc.replay_mode, "trajectory": trajectory_settings(config),
            "configured_replay_share": tc.replay_share, "synthetic_blocks_used": used,
            "synthetic_tokens_used": used * tc.block_len,
            **({"stream_blocks_per_epoch": spec.main_counts, "configured_stream_shares": dict(tc.streams),
                "realised_shares": realised_shares(spec)} if streams else {})}


def trajectory_settings(config: EntiGraphConfig) -> dict:
    """The settings that decide a training's trajectory (a checkpoint only resumes under the same ones);
    max_steps, checkpointing, logging and worker counts may change between resumes."""
    tc = config.train
    keys = ("block_len", "global_batch_size", "epochs", "lr", "warmup_ratio", "min_lr_ratio",
            "weight_decay", "grad_clip", "dtype", "strategy", "max_synthetic_tokens")  # streams: in the spec
    # the model trained, whether named by train.base_model or (unset) by model.name
    return {"seed": tc.effective_seed(config.seed), "base_model": base_model_name(config),
            **{k: getattr(tc, k) for k in keys}}


def _check_same_data(config: EntiGraphConfig, mixture: dict) -> None:
    """Checkpoints in this training's folder resume a run over the same data stream and settings; anything
    else would silently continue the old training, so it is an error naming the fix."""
    previous = train_url(config, "mixture.json")
    if not storage.exists(previous) or not storage.exists(train_url(config, "ray")):
        return
    old = json.loads(storage.read_text(previous))
    recorded = old.get("trajectory")  # absent in runs made before it was recorded: only the stream is compared
    changed = [k for k, v in mixture.get("trajectory", {}).items() if recorded is not None and recorded.get(k) != v]
    if (old.get("spec"), old.get("counts")) != (mixture["spec"], mixture["counts"]):
        changed.insert(0, "the data stream (synthetic corpus, train.max_synthetic_tokens, block length or replay)"
                       if "spec" in old else "the data stream (written by an older version)")
    if changed:
        raise ConfigError(
            f"{train_url(config)} holds checkpoints of a different training ({', '.join(changed)} changed), which a "
            "re-run would resume. Fix: set train.name to a new folder, or delete that folder to train from scratch.")


def _storage_args(url: str) -> dict:
    if storage.is_local(url):
        return {"storage_path": os.path.abspath(url.removeprefix("file://"))}
    paths, fs = storage.for_ray_data([url])
    return {"storage_path": paths[0], "storage_filesystem": fs}


def run_train(config: EntiGraphConfig, ctx: RunContext | None = None) -> TrainSummary:
    """Pack, mix and train with Ray Train; `ctx`: the run's context when the caller resolved it already."""
    started = time.time()
    ctx = ctx or RunContext.resolve(config)
    storage.check_writable(config.output_dir)
    check_trackers(config)  # before Ray starts: a missing tracker library is a one-line error
    Layout(config.output_dir, num_partitions=config.num_partitions).check_version(create=True)
    with lease_for(config, "train"):  # one writer per output_dir; packing commits check the fence
        ctx.layout = fenced_layout(config)
        return _train(config, ctx, started)


def _train(config: EntiGraphConfig, ctx: RunContext, started: float) -> TrainSummary:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # lazy: only to train
    from ray.train.torch import TorchTrainer

    save_resolved_config(config)
    init_ray(config)
    counts = run_pack(config, ctx)
    mixture = build_mixture(config, counts)
    _check_same_data(config, mixture)
    storage.write_text(train_url(config, "mixture.json"), json.dumps(mixture))
    print(f"[train] {mixture['epoch_length']} blocks per epoch, replay share realised "
          f"{mixture['realised_replay_share']:.4f} (configured {config.train.replay_share}, "
          f"mode {config.train.replay_mode})", flush=True)
    if mixture.get("realised_shares"):
        print("[train] token shares realised: " + ", ".join(
            f"{k} {v:.4f} (configured {config.train.streams.get(k, '-')})"
            for k, v in mixture["realised_shares"].items()), flush=True)
    tc = config.train
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config_json": config.model_dump_json(), "block_files": block_files(ctx)},
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                     accelerator_type=tc.accelerator_type,
                                     resources_per_worker={"CPU": tc.cpus_per_worker,
                                                           **({"GPU": 1} if tc.use_gpu else {})}),
        run_config=RunConfig(name="train", checkpoint_config=CheckpointConfig(num_to_keep=tc.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=tc.max_failures),
                             **_storage_args(train_url(config, "ray"))),
    )
    trainer.fit()
    metrics_url = train_url(config, "metrics.jsonl")
    lines = read_metrics(train_url(config))
    plot_url = plot_metrics(lines, train_url(config, "metrics.png"))
    return TrainSummary(
        steps=len(lines), blocks=counts, realised_replay_share=mixture["realised_replay_share"],
        synthetic_tokens_used=mixture["synthetic_tokens_used"],
        final_loss=lines[-1]["loss"] if lines else None,
        mean_tokens_per_s=sum(m["tokens_per_s"] for m in lines) / max(len(lines), 1),
        model_url=train_url(config, "model"), metrics_url=metrics_url, plot_url=plot_url,
        wall_s=time.time() - started, realised_shares=mixture.get("realised_shares") or {},
    )


def plot_metrics(lines: list[dict], url: str) -> str | None:
    """Loss on synthetic and replay blocks, and the learning rate, against steps (PNG)."""
    if not lines:
        return None
    import io

    import matplotlib  # lazy: matplotlib loads only to draw the loss plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in lines]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("loss_synthetic", "synthetic"), ("loss_replay", "replay"), ("loss", "all")):
        pts = [(s, m[key]) for s, m in zip(steps, lines) if m.get(key) is not None]
        if pts:
            ax1.plot(*zip(*pts), label=label)
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1.set_title("training loss")
    ax2.plot(steps, [m["lr"] for m in lines])
    ax2.set_xlabel("step")
    ax2.set_title("learning rate")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes(url, buf.getvalue())
    return url
