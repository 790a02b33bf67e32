"""Run a test body on several CPU processes joined by a gloo process group (torch.distributed)."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as tmp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, args):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
        # both ranks done before either tears the group down: a rank leaving while its peer's
        # gloo threads still talk to it can abort the peer ("terminate called without an
        # active exception", SIGABRT), seen once in a full CI run
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_gloo(fn, world: int, *args) -> None:
    """``fn(rank, world, *args)`` on ``world`` spawned processes (``fn``: a module-level function)."""
    tmp.spawn(_entry, args=(world, _free_port(), fn, args), nprocs=world, join=True)
