"""Data-parallel runs under ``torchrun``: process group set-up, sharding, and gathering per-example flags.

Each rank trains on its own shard with a DistributedDataParallel model and attacks its own examples with the
bare module (attacks need no gradient synchronisation). Only rank 0 writes to the run directory; the other ranks'
Hydra directories are scratch space in the temp folder, removed at exit.
"""
import inspect
import logging
import os
import tempfile

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """True on rank 0 (and in a single-process run)."""
    return world()[0] == 0


def setup(device_name: str) -> torch.device | None:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU); return this rank's device, None if not DDP."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return None
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when running under torchrun, else ``model`` itself."""
    if world()[1] <= 1:
        return model
    # No buffer sync in forward: attacks and predictions run extra eval-mode forwards on the bare module.
    ddp = torch.nn.parallel.DistributedDataParallel
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
               else {"broadcast_buffers": False})
    return ddp(model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


def bare(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (what attacks and evaluation use)."""
    return getattr(model, "module", model)


def shard(n: int) -> torch.Tensor:
    """This rank's indices of ``n`` examples: every world-th one, starting at its rank."""
    rank, size = world()
    return torch.arange(rank, n, size)


def gather_flags(local: dict, n: int) -> dict:
    """Reassemble per-example flags computed on ``shard(n)`` by every rank, in the original order."""
    rank, size = world()
    if size <= 1:
        return local
    parts = [None] * size
    dist.all_gather_object(parts, {k: v.cpu() for k, v in local.items()})
    out = {k: torch.zeros(n, dtype=v.dtype) for k, v in local.items()}
    for r, part in enumerate(parts):
        for k, v in part.items():
            out[k][r::size] = v
    return out


def scratch_dir() -> str:
    """A private directory for a rank other than 0, whose files nobody reads."""
    for handler in logging.getLogger().handlers:  # one log, rank 0's: the others only warn, on the console
        if isinstance(handler, logging.FileHandler):
            logging.getLogger().removeHandler(handler)
    logging.getLogger().setLevel(logging.WARNING)
    return tempfile.mkdtemp(prefix=f"advbench-rank{world()[0]}-")


def teardown() -> None:
    """Leave the process group."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
