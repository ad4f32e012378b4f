"""Data-parallel training helpers: meta-gradient averaging across ranks and a start-of-run weight broadcast.

MetaSeg's trainers evaluate the network functionally (``functional_forward`` with explicit parameter tensors), so
``DistributedDataParallel``'s forward/backward hooks never fire; the gradients are averaged explicitly instead.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

__all__ = ["GradientAllReduce", "broadcast_parameters"]


class GradientAllReduce:
    """Average the gradients of the optimizer's parameters over all ranks after each backward pass.

    Attached to ``IterationEvents.BACKWARD_COMPLETED``, which :class:`scripts.trainer.PointLossTrainer` fires between
    ``loss.backward()`` and gradient clipping / ``optimizer.step()``, so every rank clips and steps with the same
    averaged gradient and the replicas stay identical. A parameter without a gradient on this rank contributes zeros
    (every rank must reduce the same tensors). A no-op when ``torch.distributed`` is not initialised.
    """

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (a trainer; its ``optimizer`` is looked up at each iteration)."""
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is None:
            raise TypeError(f"GradientAllReduce needs a trainer with an optimizer, got {type(engine).__name__}.")
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= dist.get_world_size()
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


def broadcast_parameters(network: torch.nn.Module, src: int = 0) -> torch.nn.Module:
    """Copy rank ``src``'s parameters and buffers to every rank (no-op without an initialised process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        with torch.no_grad():
            for t in list(network.parameters()) + list(network.buffers()):
                dist.broadcast(t, src=src)
    return network
