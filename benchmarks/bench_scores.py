"""Per-example scoring cost, side by side in one run: `grand` vs a naive per-example loop vs a training step, and
an EL2N pass vs a training epoch.

    .venv/bin/python benchmarks/bench_scores.py [--device cpu|cuda] [--batch-size 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch import nn

from lightning_datadiet import el2n, grand
from lightning_datadiet.demo import SmallCNN


def timed(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def naive_grand(model: nn.Module, x, y):
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(x.shape[0]):
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        out.append(torch.sqrt(sum((g**2).sum() for g in torch.autograd.grad(loss, params))))
    return torch.stack(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epoch-size", type=int, default=5000)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = SmallCNN(10, width=16).to(dev)
    b = args.batch_size
    x, y = torch.randn(b, 3, 32, 32, device=dev), torch.randint(0, 10, (b,), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def train_step():
        model.train()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    ref_model = copy.deepcopy(model)
    t_train = timed(train_step, args.repeats, sync)
    t_grand = timed(lambda: grand(ref_model, x, y, method="vmap"), args.repeats, sync)
    t_grand32 = timed(lambda: grand(ref_model, x, y, method="vmap", chunk_size=32), args.repeats, sync)
    t_naive = timed(lambda: naive_grand(ref_model, x, y), max(1, args.repeats // 2), sync)
    err = ((grand(ref_model, x, y, method="vmap") - naive_grand(ref_model, x, y)).abs() / naive_grand(ref_model, x, y)).max()

    n = args.epoch_size
    data_x = torch.randn(n, 3, 32, 32, device=dev)
    data_y = torch.randint(0, 10, (n,), device=dev)

    def epoch():
        model.train()
        for i in range(0, n, b):
            opt.zero_grad()
            nn.functional.cross_entropy(model(data_x[i : i + b]), data_y[i : i + b]).backward()
            opt.step()

    def el2n_pass():
        model.eval()
        with torch.no_grad():
            for i in range(0, n, b):
                el2n(model(data_x[i : i + b]), data_y[i : i + b])

    t_epoch = timed(epoch, 1, sync)
    t_el2n = timed(el2n_pass, 1, sync)
    res = {
        "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__, "batch": b,
        "params": sum(p.numel() for p in model.parameters()),
        "train_step_ex_per_s": b / t_train, "grand_ex_per_s": b / t_grand, "grand_chunk32_ex_per_s": b / t_grand32,
        "naive_ex_per_s": b / t_naive, "grand_vs_naive_speedup": t_naive / t_grand,
        "grand_cost_vs_train_step": t_grand / t_train, "grand_max_rel_err_vs_naive": float(err),
        "epoch_s": t_epoch, "el2n_pass_s": t_el2n, "el2n_pass_vs_epoch": t_el2n / t_epoch,
    }
    print(f"SmallCNN(width=16), {res['params']} params, batch {b}, {dev}, {res['threads']} threads, torch {torch.__version__}")
    print(f"{'':32s}{'examples/s':>12s}")
    for k in ("train_step", "grand", "grand_chunk32", "naive"):
        print(f"{k:32s}{res[k + '_ex_per_s']:12.0f}")
    print(f"grand vs naive loop: {res['grand_vs_naive_speedup']:.1f}x faster (max rel err {err:.1e})")
    print(f"grand batch cost / training step: {res['grand_cost_vs_train_step']:.2f}x")
    print(f"EL2N pass over {n} examples: {t_el2n:.2f}s vs one training epoch {t_epoch:.2f}s -> {res['el2n_pass_vs_epoch']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
