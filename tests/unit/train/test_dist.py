"""train/dist.py is the one home of torch.distributed in training (a collective on the wrong device killed
every GPU run): no other module under train/ names it."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

from ray_entigraph.train import dist

TRAIN = Path(dist.__file__).parent


def _distributed_uses(source: str) -> list[int]:
    """Lines that import or reach torch.distributed (comments and strings do not count)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name.startswith("torch.distributed") for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module and (
                node.module.startswith("torch.distributed")
                or (node.module == "torch" and any(a.name == "distributed" for a in node.names))):
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and ast.unparse(node) == "torch.distributed":
            lines.append(node.lineno)
    return lines


def test_no_torch_distributed_outside_the_helper():
    assert _distributed_uses("import torch.distributed as dist\nx = torch.distributed.get_rank()\n") == [1, 2]
    assert _distributed_uses("# torch.distributed in a comment\ns = 'torch.distributed'\n") == []
    offenders = {path.name: _distributed_uses(path.read_text()) for path in sorted(TRAIN.glob("*.py"))
                 if path.name != "dist.py"}
    assert {name for name, lines in offenders.items() if lines} == set(), offenders


def test_one_process_needs_no_group():
    d = dist.current(use_gpu=False)
    assert (d.rank, d.world, d.device.type) == (0, 1, "cpu") and not d.active
    t = torch.tensor([1.0, 2.0])
    assert dist.Dist.all_reduce_sum(d, t) is t  # nothing to reduce


def test_clip_norm_is_exact_in_one_process():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(300, 200)), torch.nn.Parameter(torch.randn(7))]
    for p in params:
        p.grad = torch.randn_like(p) * 3
    want = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))
    norm = dist.clip_grad_norm(params, 1.0, dist.current(False))
    assert abs(float(norm) - float(want)) <= 1e-6 * float(want)
    after = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))
    assert abs(float(after) - 1.0) < 1e-5  # clipped to the max norm
