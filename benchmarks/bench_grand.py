"""All per-example gradient norms of one batch, over one ordinary training step on it, side by side in one run.

For every model, each method is timed in turn inside every repeat (interleaved, so background load hits all of
them alike); the table reports the median over repeats of (method time / training-step time) and the median
seconds (wall clock), and the same median ratio of process CPU time (less sensitive to other load on the
machine). Methods: the norm-only engine (`grand(method="norms")`), the torch.func path (`grand(method="vmap")`,
chunk None and 32), a naive per-example loop, BackPACK `BatchL2Grad`, Opacus `GradSampleModule` (per-sample
gradients) and Opacus `GradSampleModuleFastGradientClipping` (ghost `per_sample_gradient_norms`). Peers that are
not installed, or that refuse a model, are reported with the reason. Every method's norms are checked against the
engine's (max relative difference).

Peak memory (``--memory``): each (model, method) runs once in a fresh subprocess; on CPU the figure is the
resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the call) minus the
resident set just before the call; on CUDA
``torch.cuda.max_memory_allocated`` minus the allocation before the call.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_grand.py --repeats 5 --memory --json bench_grand.json
    pip install -e ".[bench]"   # the peers (opacus, backpack-for-pytorch)
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lightning_datadiet import grand
from lightning_datadiet.models import resnet18_cifar

BATCH, CLASSES = 128, 10


class CNN4(nn.Module):
    """Four 3x3 conv + ReLU stages (``w, 2w, 4w, 8w`` channels, 2x2 max-pool between), no BatchNorm."""

    def __init__(self, width: int = 16, num_classes: int = CLASSES) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4 * w, 8 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


class SmallViT(nn.Module):
    """A small vision transformer on 3x32x32: 4x4 patches (64 tokens), a Linear patch embedding, an Embedding of
    positions, ``depth`` pre-LayerNorm blocks with multi-head self-attention written as plain matmuls/softmax."""

    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, num_classes: int = CLASSES) -> None:
        super().__init__()
        self.heads = heads
        self.patch = nn.Linear(48, dim)
        self.pos = nn.Embedding(64, dim)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                dict(ln1=nn.LayerNorm(dim), qkv=nn.Linear(dim, 3 * dim), proj=nn.Linear(dim, dim),
                     ln2=nn.LayerNorm(dim), ff1=nn.Linear(dim, 2 * dim), ff2=nn.Linear(2 * dim, dim))
            )
            for _ in range(depth)
        )
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        b = x.shape[0]
        tokens = F.unfold(x, 4, stride=4).transpose(1, 2)  # [B, 64, 48]
        positions = torch.arange(64, device=x.device).expand(b, 64)
        h = self.patch(tokens) + self.pos(positions)
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["ln1"](h)).view(b, 64, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)  # [B, H, T, T]
            h = h + blk["proj"]((att @ v).transpose(1, 2).reshape(b, 64, -1))
            h = h + blk["ff2"](F.gelu(blk["ff1"](blk["ln2"](h))))
        return self.head(self.ln(h).mean(1))


def make_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("cnn"):
        return CNN4(int(name[3:]))
    if name.startswith("resnet18_w"):
        net = resnet18_cifar(CLASSES, width=int(name[len("resnet18_w"):]))
        net.train()
        with torch.no_grad():  # non-trivial running statistics
            for _ in range(2):
                net(torch.randn(32, 3, 32, 32))
        return net
    if name == "vit":
        return SmallViT()
    raise ValueError(name)


MODELS = {
    "cnn16": "4-conv CNN, width 16",
    "cnn32": "4-conv CNN, width 32",
    "resnet18_w16": "ResNet-18 (CIFAR), width 16, eval mode",
    "resnet18_w64": "ResNet-18 (CIFAR), width 64 (full), eval mode",
    "vit": "small ViT (2 blocks, dim 64, 64 tokens)",
}
METHODS = ["norms", "vmap", "vmap32", "naive", "backpack", "opacus_gsm", "opacus_ghost"]
LABELS = {
    "norms": "grand norms (this engine)", "vmap": "grand vmap, chunk None", "vmap32": "grand vmap, chunk 32",
    "naive": "naive loop", "backpack": "BackPACK BatchL2Grad", "opacus_gsm": "Opacus per-sample grads",
    "opacus_ghost": "Opacus ghost norms",
}
VMAP_MEMORY_LIMIT = 1.5e9  # bytes of per-example gradients this shared machine can afford


def naive(model, x, y):
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(x.shape[0]):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        out.append(torch.sqrt(sum((g**2).sum() for g in torch.autograd.grad(loss, params))))
    return torch.stack(out)


def build(method: str, name: str, model: nn.Module, x, y) -> Callable[[], torch.Tensor]:
    """A closure computing the [B] norms with ``method``; raises with a reason when it cannot run."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    params = sum(p.numel() for p in model.parameters())
    if method == "norms":
        return lambda: grand(model, x, y, method="norms")
    if method in ("vmap", "vmap32"):
        chunk = None if method == "vmap" else 32
        need = (chunk or x.shape[0]) * params * 4
        if need > VMAP_MEMORY_LIMIT:
            raise MemoryError(f"skipped: needs {need / 1e9:.1f} GB of per-example gradients")
        return lambda: grand(model, x, y, method="vmap", chunk_size=chunk)
    if method == "naive":
        model = copy.deepcopy(model).eval()
        return lambda: naive(model, x, y)
    if method == "backpack":
        try:
            from backpack import backpack, extend
            from backpack.extensions import BatchL2Grad
        except ImportError as err:
            raise ImportError("not installed (pip install backpack-for-pytorch)") from err
        net = extend(copy.deepcopy(model).eval(), use_converter=name.startswith("resnet"))
        lossfn = extend(nn.CrossEntropyLoss(reduction="sum"))
        ps = [p for p in net.parameters() if p.requires_grad]

        def run():
            for p in ps:
                p.grad = None
            with backpack(BatchL2Grad()):
                lossfn(net(x), y).backward()
            return torch.stack([p.batch_l2 for p in ps]).sum(0).sqrt()

        return run
    if method.startswith("opacus"):
        try:
            from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
        except ImportError as err:
            raise ImportError("not installed (pip install opacus)") from err
        if has_bn:
            raise NotImplementedError("refuses BatchNorm (Opacus validator; its hooks also need train mode)")
        net = copy.deepcopy(model).train()  # no BatchNorm/dropout here: train mode computes what eval mode does
        ps = [p for p in net.parameters() if p.requires_grad]
        if method == "opacus_gsm":
            gsm = GradSampleModule(net, loss_reduction="sum")

            def run():
                for p in ps:
                    p.grad, p.grad_sample = None, None
                F.cross_entropy(gsm(x), y, reduction="sum").backward()
                return torch.stack([p.grad_sample.flatten(1).pow(2).sum(1) for p in ps]).sum(0).sqrt()

            return run
        gsm = GradSampleModuleFastGradientClipping(net, loss_reduction="sum", use_ghost_clipping=True)

        def run():
            for p in ps:
                p.grad = None
            F.cross_entropy(gsm(x), y, reduction="sum").backward()
            return gsm.get_norm_sample()

        return run
    raise ValueError(method)


def train_step_fn(model: nn.Module, x, y) -> Callable[[], None]:
    net = copy.deepcopy(model)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)

    def step():
        net.train()
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def data(dev):
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, 32, 32, generator=g).to(dev), torch.randint(0, CLASSES, (BATCH,), generator=g).to(dev)


def bench_model(name: str, methods: list[str], repeats: int, dev: torch.device) -> dict:
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model = make_model(name).to(dev)
    x, y = data(dev)
    fns: dict[str, Callable] = {"train_step": train_step_fn(model, x, y)}
    notes, errors = {}, {}
    ref = grand(model, x, y, method="norms")
    for m in methods:
        try:
            fn = build(m, name, model, x, y)
            out = fn()  # warm-up, and the exactness check
            errors[m] = float(((out.detach() - ref).abs() / ref).max())
            fns[m] = fn
        except Exception as err:  # a peer that cannot run this model: say why
            notes[m] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    fns["train_step"]()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync()
            t, c = time.perf_counter(), time.process_time()
            fn()
            sync()
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    ratios = {k: statistics.median(a / b for a, b in zip(times[k], times["train_step"])) for k in fns}
    cpu_ratios = {k: statistics.median(a / b for a, b in zip(cpu[k], cpu["train_step"])) for k in fns}
    return {
        "model": name, "description": MODELS[name], "params": sum(p.numel() for p in model.parameters()),
        "median_s": {k: statistics.median(v) for k, v in times.items()}, "ratio": ratios,
        "cpu_ratio": cpu_ratios, "wall_s": times, "cpu_s": cpu,
        "max_rel_err_vs_norms": errors, "notes": notes,
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def memory_child(name: str, method: str, device: str) -> None:
    dev = torch.device(device)
    model = make_model(name).to(dev)
    x, y = data(dev)
    fn = train_step_fn(model, x, y) if method == "train_step" else build(method, name, model, x, y)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        print(json.dumps({"peak_bytes": torch.cuda.max_memory_allocated() - base}))
    else:
        with open("/proc/self/clear_refs", "w") as f:  # reset the resident-set high-water mark (Linux >= 4.0)
            f.write("5")
        base = _rss_bytes()
        fn()
        with open("/proc/self/status") as f:
            hwm = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))
        print(json.dumps({"peak_bytes": max(0, hwm - base)}))


def memory(name: str, methods: list[str], device: str) -> dict:
    out = {}
    for m in ["train_step", *methods]:
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", name, m, "--device", device,
             "--threads", str(torch.get_num_threads())],
            capture_output=True,
            text=True,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        out[m] = json.loads(lines[-1])["peak_bytes"] if proc.returncode == 0 and lines else None
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--memory", action="store_true", help="also measure peak memory (fresh subprocess each)")
    p.add_argument("--memory-methods", default=None, help="methods to measure memory for (default: all that run)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--json", default=None)
    p.add_argument("--memory-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(*args.memory_child, args.device)
        return
    dev = torch.device(args.device)
    methods = args.methods.split(",")
    print(f"torch {torch.__version__}, {dev}, {torch.get_num_threads()} threads, batch {BATCH}, 3x32x32, "
          f"{CLASSES} classes, median of {args.repeats} interleaved repeats; {time.strftime('%Y-%m-%d %H:%M')}")
    results = []
    for name in args.models.split(","):
        res = bench_model(name, methods, args.repeats, dev)
        if args.memory:
            chosen = args.memory_methods.split(",") if args.memory_methods else methods
            res["peak_bytes"] = memory(name, [m for m in chosen if m in methods and m not in res["notes"]], args.device)
        results.append(res)
        print(f"\n{res['description']} ({res['params'] / 1e6:.2f}M params); training step "
              f"{res['median_s']['train_step'] * 1e3:.0f} ms")
        for m in methods:
            mem = res.get("peak_bytes", {}).get(m)
            mem_s = f"{mem / 2**20:8.0f} MB" if mem is not None else ""
            if m in res["notes"]:
                print(f"  {LABELS[m]:28s}  -- {res['notes'][m]}")
            else:
                print(f"  {LABELS[m]:28s} {res['ratio'][m]:6.2f}x (cpu {res['cpu_ratio'][m]:5.2f}x) "
                      f"{res['median_s'][m] * 1e3:8.0f} ms  "
                      f"rel.err {res['max_rel_err_vs_norms'][m]:.1e} {mem_s}")
        if "peak_bytes" in res and res["peak_bytes"].get("train_step") is not None:
            print(f"  {'training step':28s} {'1.00x':>7s}  {'':8s}     {'':15s} {res['peak_bytes']['train_step'] / 2**20:8.0f} MB")
        sys.stdout.flush()
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"torch": torch.__version__, "device": str(dev), "threads": torch.get_num_threads(),
                           "repeats": args.repeats, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
