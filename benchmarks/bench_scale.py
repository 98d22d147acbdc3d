"""Scale benchmark at N examples (default 10,000,000), side by side in one run: callback memory per example,
score-file write/load, every selection rule, forgetting updates, and gathering scores across 2 processes.

    .venv/bin/python benchmarks/bench_scale.py [--n 10000000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_datadiet import load_scores, save_scores, selection
from lightning_datadiet.scores import ForgettingState, forgetting_update


def clock(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _gather_worker(rank: int, world: int, port: int, n: int, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    idx = torch.arange(rank, n, world)  # strided shard, as the scoring pass does
    val = torch.rand(idx.numel())
    dist.barrier()
    t = time.perf_counter()
    longest = (n + world - 1) // world
    pi = torch.full((longest,), -1, dtype=torch.long)
    pv = torch.zeros(longest)
    pi[: idx.numel()], pv[: idx.numel()] = idx, val
    gi = [torch.empty_like(pi) for _ in range(world)]
    gv = [torch.empty_like(pv) for _ in range(world)]
    dist.all_gather(gi, pi)
    dist.all_gather(gv, pv)
    all_i, all_v = torch.cat(gi), torch.cat(gv)
    keep = all_i >= 0
    dense = torch.full((n,), float("nan"))
    dense[all_i[keep]] = all_v[keep]
    elapsed = time.perf_counter() - t
    if rank == 0:
        q.put((elapsed, int(torch.isnan(dense).sum())))
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    n = args.n
    res: dict = {"n": n, "threads": torch.get_num_threads(), "torch": torch.__version__}
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(n, generator=g)
    labels = torch.randint(0, 100, (n,), generator=g)

    # (a) memory per example beyond the data: the dense tensors the callbacks hold
    state = ForgettingState(n)
    forgetting = {
        "ForgettingState (last_correct, ever_correct, forgotten int32)": sum(t.nbytes for t in state.state_dict().values()),
        "labels int32": n * 4,
        "epoch buffer: int32 index + correct bool + valid bool": n * (4 + 1 + 1),
    }
    res["forgetting_bytes_per_example"] = sum(forgetting.values()) / n
    res["pass_bytes_per_example"] = (4 + 8) / 1  # scores float32 + labels int64 of the scoring pass
    print(f"N = {n:,}; torch {torch.__version__}; {res['threads']} threads")
    print("callback memory per example (beyond the data):")
    for k, v in forgetting.items():
        print(f"  forgetting  {k:58s} {v / n:5.1f} B")
    print(f"  forgetting  {'total':58s} {res['forgetting_bytes_per_example']:5.1f} B")
    print(f"  el2n/grand  {'scores float32 + gathered labels int64 (during a scoring)':58s} {res['pass_bytes_per_example']:5.1f} B")

    # (b) score files
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.scores"
        res["write_s"], _ = clock(lambda: save_scores(path, scores, method="el2n", epoch=20, labels=labels))
        res["load_s"], loaded = clock(lambda: load_scores(path))
        assert torch.equal(loaded.scores, scores)
        res["file_mb"] = path.stat().st_size / 1e6
    print(f"score file: write {res['write_s']:.2f}s (incl. label fingerprint), load {res['load_s']:.2f}s, {res['file_mb']:.0f} MB")

    # (c) selection rules
    rules = {
        "highest": lambda: selection.highest(scores, 0.5),
        "lowest": lambda: selection.lowest(scores, 0.5),
        "window": lambda: selection.window(scores, 0.5, 0.25),
        "random": lambda: selection.random(scores, 0.5, seed=0),
        "coverage": lambda: selection.coverage(scores, 0.5, beta=0.1),
        "highest class-balanced": lambda: selection.highest(scores, 0.5, labels=labels, class_balanced=True),
        "random class-balanced": lambda: selection.random(scores, 0.5, labels=labels, class_balanced=True),
        "coverage class-balanced": lambda: selection.coverage(scores, 0.5, beta=0.1, labels=labels, class_balanced=True),
        "highest tie_break=random": lambda: selection.select(scores, 0.5, "highest", tie_break="random"),
    }
    res["selection_s"] = {}
    print("selection at keep 50%:")
    for name, fn in rules.items():
        t, kept = clock(fn)
        res["selection_s"][name] = t
        print(f"  {name:28s} {t:6.2f}s  ({kept.numel():,} kept)")

    # (d) forgetting updates: one epoch of N presentations
    idx = torch.randperm(n, generator=g)
    correct = torch.rand(n, generator=g) > 0.3
    res["forgetting_update_s"], _ = clock(lambda: forgetting_update(state, idx, correct))
    print(f"forgetting_update, {n:,} presentations: {res['forgetting_update_s']:.2f}s")

    # (e) gather by index across 2 gloo processes
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    mp.spawn(_gather_worker, args=(2, port, n, q), nprocs=2, join=True)
    res["gather_2proc_s"], missing = q.get()
    assert missing == 0
    print(f"gather {n:,} scores by index across 2 processes (gloo, loopback): {res['gather_2proc_s']:.2f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
