"""Data-parallel training in a process group: what makes N ranks compute what one process computes.

One step means the same with any number of ranks: the global batch is ``Task.batch(seed, step, B)``
as on one process; rank r of N trains on slice r of it (B divisible by N); the learning rate does not
change with N; every random choice (the sandwich rule's subnet, agd's architecture sample) is a
function of seed and step, so every rank makes the same one; and before each optimizer step the
gradients of that optimizer's parameters are averaged over the ranks. A loss that is a function of
the whole batch rather than a mean over samples (CAT's kernel alignment, the distillation's
normalisation) sees the global batch (``gather_batch``, ``global_mean``). So N ranks compute what one
process computes, up to floating point, and a checkpoint written with one rank count resumes with any
other.

Why an all-reduce before each optimizer step rather than wrapping modules in
``DistributedDataParallel``: an objective calls its modules several times a step (the discriminator
on real and generated images, the distillation mappers outside any forward, a supernet whose active
subnet leaves parameters idle), which DDP's one-forward-one-backward reducer does not fit. The
average runs as one flat all-reduce per optimizer step (gloo on CPU, NCCL on GPU); parameters without
a gradient (an idle branch, the same on every rank) are skipped.

Outside a process group every function here is the identity: one process is the N = 1 case. Where
the group comes from (Ray Train's ``TorchTrainer``) is ``nas.ray_train``'s business.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_slice(batch: torch.Tensor, shard: tuple[int, int] | None = None) -> torch.Tensor:
    """This rank's equal slice of a global batch (``shard``: (rank, ranks), default this process's)."""
    rank, ranks = shard or world()
    size = batch.shape[0]
    return batch[rank * size // ranks:(rank + 1) * size // ranks]


def global_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over the ranks (itself outside a process group): for statistics of the global
    batch computed from each rank's slice of equal size. No gradient flows through it."""
    _, size = world()
    if size == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / size


def gather_batch(local: torch.Tensor) -> torch.Tensor:
    """The global batch of ``local`` (each rank's slice, in rank order), for a loss of the whole batch.

    Only this rank's slice carries a gradient, scaled by the number of ranks: every rank computes the
    same global loss, so after the gradients are averaged over the ranks each parameter has the
    full-batch gradient, as on one process."""
    rank, size = world()
    if size == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(parts, local.detach().contiguous())
    # value: exactly ``local``; gradient: ``size`` times its own (x - x.detach() is exactly zero)
    parts[rank] = local + (size - 1) * (local - local.detach())
    return torch.cat(parts)


def _average_gradients(optimizer: torch.optim.Optimizer, *_: Any) -> None:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def replicate(objective: Any) -> None:
    """Make the ranks' copies of ``objective`` one: rank 0's parameters everywhere, and gradients averaged
    before every optimizer step."""
    for optimizer in objective.optimizers():
        for group in optimizer.param_groups:
            for p in group["params"]:
                dist.broadcast(p.data, src=0)
        optimizer.register_step_pre_hook(_average_gradients)


def sync_batch_norm(module: torch.nn.Module) -> None:
    """On CUDA: plain batch norms of ``module`` become SyncBatchNorm (statistics of the global batch), in
    place, keeping their parameters (the optimizer's). The supernet's elastic batch norms stay per rank."""
    for name, child in list(module.named_children()):
        if type(child) is torch.nn.BatchNorm2d:
            setattr(module, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            sync_batch_norm(child)


def data_parallel(objective: Any, device: torch.device) -> None:
    """Inside a process group of more than one rank: ``objective`` trained data-parallel from here on (its
    batch norms synchronised on CUDA, rank 0's parameters broadcast, gradients averaged). Called by the
    training loop before its first step, after any restore."""
    if world()[1] == 1:
        return
    if device.type == "cuda":
        for module in vars(objective).values():
            if isinstance(module, torch.nn.Module):
                sync_batch_norm(module)
    replicate(objective)
