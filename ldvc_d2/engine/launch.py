"""Multi-process runs on GPUs *and* CPUs, on detectron2 v0.6 and current detectron2.

With CUDA available, :func:`launch` is detectron2's own (NCCL, one process per GPU: unchanged). On a
machine without CUDA, detectron2 v0.6's launch asserts CUDA, so this module starts the processes itself:
``--num-gpus N`` then means N CPU processes on this machine, joined with gloo over ``--dist-url``
(several machines: ``--num-machines`` and ``--machine-rank`` as on GPUs); with one process per machine,
it is the process that was started (as detectron2 runs a world of one). :func:`create_ddp_model`
wraps a CPU module without ``device_ids`` (detectron2 passes ``[local_rank]``, which DDP refuses for
a CPU module) and leaves GPU modules to detectron2.
"""
import logging
import os
from datetime import timedelta
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import defaults
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["create_ddp_model", "launch", "maybe_sync_batchnorm"]

TIMEOUT = timedelta(minutes=30)


def launch(main_func: Callable, num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: Optional[str] = None, args: Sequence = ()) -> None:
    """detectron2's ``launch`` signature; on CPUs, ``num_gpus_per_machine`` processes per machine (gloo)."""
    world_size = num_machines * num_gpus_per_machine
    if torch.cuda.is_available() or world_size == 1:
        d2_launch(main_func, num_gpus_per_machine, num_machines=num_machines, machine_rank=machine_rank,
                  dist_url=dist_url, args=args)
        return
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto picks a free port on this machine; several machines need "
                             "tcp://<address of machine 0>:<port>.")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    logging.getLogger(__name__).info(
        f"No CUDA: {num_gpus_per_machine} CPU process(es) on this machine, world size {world_size}, gloo at {dist_url}."
    )
    worker_args = (main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args))
    if num_gpus_per_machine == 1:  # one process on this machine: this one (a spawned copy would import all again)
        _cpu_worker(0, *worker_args)
        return
    mp.start_processes(_cpu_worker, nprocs=num_gpus_per_machine, start_method="spawn", daemon=False, args=worker_args)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_worker(local_rank: int, main_func: Callable, world_size: int, per_machine: int, machine_rank: int,
                dist_url: str, args: tuple) -> None:
    rank = machine_rank * per_machine + local_rank
    # one share of this machine's cores per process, as one GPU each; fewer where OMP_NUM_THREADS asks for fewer
    share = max(1, (os.cpu_count() or 1) // per_machine)
    asked = os.environ.get("OMP_NUM_THREADS", "").strip()
    torch.set_num_threads(min(share, int(asked)) if asked.isdigit() and int(asked) > 0 else share)
    dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=TIMEOUT)
    if hasattr(comm, "create_local_process_group"):  # current detectron2
        comm.create_local_process_group(per_machine)
    else:  # v0.6: every process creates every machine's group, in the same order
        for machine in range(world_size // per_machine):
            group = dist.new_group(list(range(machine * per_machine, (machine + 1) * per_machine)))
            if machine == machine_rank:
                comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
        comm.synchronize()  # every process is done with its collectives before any tears its group down
    finally:
        dist.destroy_process_group()
        # a later launch in this process (one process per machine runs here) builds its local group afresh
        comm._LOCAL_PROCESS_GROUP = None
        if hasattr(getattr(comm, "create_local_process_group", None), "cache_clear"):
            comm.create_local_process_group.cache_clear()  # current detectron2 caches the call


def create_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """DistributedDataParallel over the processes (the model itself with one process). GPU modules go
    through detectron2's ``create_ddp_model``; CPU modules get no ``device_ids``."""
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).device.type == "cuda":
        return defaults.create_ddp_model(model, **kwargs)
    return DistributedDataParallel(model, device_ids=None, **kwargs)


def maybe_sync_batchnorm(model: nn.Module, world_size: int, device_type: Optional[str] = None) -> nn.Module:
    """Convert the BatchNorm layers of the submodules a model lists in ``sync_bn_modules`` (C2S: its student;
    MMSeg trains with SyncBN) to :class:`torch.nn.SyncBatchNorm`, when ``world_size`` > 1 and the model runs on
    CUDA. On CPU processes (gloo) the layers stay BatchNorm, each process normalising its own images:
    SyncBatchNorm refuses CPU input. Parameters and buffers are the same tensors, so checkpoints and the
    evaluation model (plain BatchNorm) are unchanged. ``device_type``: default the model's parameters'."""
    names = tuple(getattr(model, "sync_bn_modules", ()))
    if not names or world_size <= 1:
        return model
    if device_type is None:
        device_type = next(model.parameters()).device.type
    if device_type != "cuda":
        logging.getLogger(__name__).warning(
            f"{type(model).__name__}: BatchNorm of {list(names)} kept per process on {device_type} "
            f"(SyncBatchNorm needs CUDA); world size {world_size}.")
        return model
    for name in names:
        setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(getattr(model, name)))
    return model
