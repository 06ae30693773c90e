"""Run a function on N gloo ranks spawned from a test (no launcher, no DeepSpeed): each rank's
`fn(rank, *args)` returns a picklable result or raises; the results come back in rank order."""

import socket
import traceback


def _on_rank(rank, world, port, fn, args, results):
    import datetime

    import torch.distributed as dist

    # a collective one rank never joins fails the test in 60 s instead of hanging it for gloo's 30 min
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        results[rank] = ("ok", fn(rank, *args))
    except Exception as e:  # the test compares what each rank raised
        results[rank] = (type(e).__name__, str(e) or traceback.format_exc())
    finally:
        dist.destroy_process_group()


def run_ranks(world, fn, *args):
    """[(kind, value)] per rank: ("ok", fn's result) or (exception class name, message)."""
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_on_rank, args=(world, port, fn, args, results), nprocs=world)
        return [results[r] for r in range(world)]
