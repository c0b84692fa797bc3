"""The one home of `torch.distributed` in training: the process group, every collective, model sharding
(DDP or FSDP2), global-norm clipping and state dicts (full, and sharded through `torch.distributed.checkpoint`).

Collectives move their tensors to the backend's device first: NCCL takes CUDA tensors only and gloo CPU
tensors only, so a loss total kept on the CPU is reduced correctly under either (a bug that killed every GPU
run at the end of step 1). The rest of `train/` never calls `torch.distributed` (a test reads the source).

Works under Ray Train (which creates the process group) and under `torchrun` (`init_from_env` creates it
from the environment torchrun sets), and with no process group at all (one process, world size 1).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from ray_entigraph.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """Where this process stands: rank, world size, local rank, and the device its collectives use."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def active(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks, returned on the tensor's own device (reduced on the backend's device)."""
        if not self.active or self.world == 1:
            return tensor
        moved = tensor.to(self.device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        return moved.to(tensor.device)

    def barrier(self) -> None:
        if self.active and self.world > 1:
            dist.barrier()


def backend_device(use_gpu: bool, local_rank: int) -> torch.device:
    if use_gpu:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def current(use_gpu: bool, device: torch.device | None = None) -> Dist:
    """This process's place, from the process group Ray Train or `init_from_env` created (or world size 1).
    `device`: the launcher's choice (Ray Train's, which knows the GPUs it made visible); else LOCAL_RANK's GPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)
    return Dist(rank, world, local_rank, device if device is not None else backend_device(use_gpu, local_rank))


def init_from_env(use_gpu: bool) -> Dist:
    """Under `torchrun` (WORLD_SIZE, RANK, MASTER_ADDR set): create the process group (NCCL on GPUs, gloo
    on CPUs). Without those variables: one process, no group."""
    if os.environ.get("MASTER_ADDR") and os.environ.get("WORLD_SIZE") and not dist.is_initialized():
        if use_gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # a group even at world size 1: NCCL and FSDP run exactly as on a cluster
        dist.init_process_group("nccl" if use_gpu else "gloo")
    return current(use_gpu)


def shutdown() -> None:
    """After a run that succeeded on every rank: wait until every rank is here (rank 0 may still be exporting,
    and no rank should tear down its gloo or NCCL connections while another still uses them), then destroy
    the group. Not after a failure: a rank that failed mid-collective would make the others wait on it."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------- sharding

def decoder_layers(model) -> list:
    """The repeated blocks of a Hugging Face causal LM (Llama, Qwen, Mistral, GPT-2, ...): FSDP2's units."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            return list(obj)
    raise ValueError(f"{type(model).__name__}: no decoder layers found (looked for model.layers, transformer.h, "
                     "gpt_neox.layers, model.decoder.layers); FSDP needs them to shard per layer. Fix: use "
                     "train.strategy=ddp for this model.")


def shard_model(model, strategy: str, d: Dist, *, compute_dtype: torch.dtype | None,
                activation_checkpointing: bool = False):
    """Wrap for data parallel training. `ddp`: a replica per rank (small models). `fsdp`: FSDP2
    (`fully_shard`) per decoder layer, then the root; parameters stay fp32 (sharded master weights),
    forward and backward compute in `compute_dtype` (None: fp32), gradients reduce in fp32."""
    if activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if not d.active:
            raise ConfigError("train.strategy=fsdp needs a process group. Fix: launch with Ray Train "
                              "(`ray-entigraph train`) or torchrun, or use train.strategy=ddp in one process.")
        mesh = _mesh(d)
        policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return model
    model = model.to(d.device)
    if d.active and d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    return model


def _mesh(d: Dist):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(d.device.type, (d.world,))


def unwrap(model):
    return getattr(model, "module", model)


@contextlib.contextmanager
def maybe_no_sync(model, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on accumulation micro-batches (DDP `no_sync`; FSDP2
    `set_requires_gradient_sync`); reduce on the last one."""
    if sync:
        yield
    elif hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def clip_grad_norm(parameters, max_norm: float, d: Dist) -> torch.Tensor:
    """Clip by the global gradient norm: the squares of every rank's gradient shards (FSDP2 gradients are
    DTensors sharded over the ranks) summed over the ranks, never a rank's own shard norm; replicated (DDP)
    gradients are counted once. Squares are summed in float64: the float32 norm of a 49,152 x 64 embedding
    gradient is off by about 1e-5 relative, enough to make two strategies disagree. Returns the norm before
    clipping (float32, on the gradients' device)."""
    params = [p for p in parameters if p.grad is not None]
    locals_ = [(p.grad.to_local(), True) if hasattr(p.grad, "to_local") else (p.grad, False) for p in params]
    device = locals_[0][0].device if locals_ else torch.device("cpu")
    sharded = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync per tensor
    replicated = torch.zeros((), dtype=torch.float64, device=device)
    for local, is_shard in locals_:
        square = torch.linalg.vector_norm(local, dtype=torch.float64).pow(2)
        if is_shard:
            sharded += square
        else:
            replicated += square
    norm = (d.all_reduce_sum(sharded) + replicated).sqrt().to(torch.float32)
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


# ---------------------------------------------------------------------------------------------- state dicts

def load_full_into(model, full_state: dict[str, torch.Tensor] | None) -> None:
    """Fill a sharded (or plain) model from a full state dict that only rank 0 holds (other ranks pass
    None): rank 0 broadcasts, each rank keeps its shard, so the whole model is never built on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, full_state or {}, options=StateDictOptions(
        full_state_dict=True, broadcast_from_rank0=dist.is_initialized(), strict=False))


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU, gathered to rank 0 (other ranks get an empty dict). A collective
    under FSDP: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(path: str, model, optimizer) -> None:
    """Model and optimizer state with `torch.distributed.checkpoint`: each rank writes its own shard files
    into `path` (`__<rank>_0.distcp`), rank 0 the metadata. Loadable on another world size."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)


def load_sharded(path: str, model, optimizer) -> None:
    """Restore what `save_sharded` wrote (each rank reads the pieces of its own shards; tensors only, no
    pickle is executed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
