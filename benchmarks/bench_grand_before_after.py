"""The norm-only GraNd engine of an earlier commit against this checkout's, side by side in one process.

The earlier package is taken from git (``git archive <commit> lightning_datadiet``) into a temporary folder,
renamed to ``ldd_before`` (its absolute imports rewritten) and imported next to this checkout's
``lightning_datadiet``. For each model the training step, the earlier engine and this engine are timed in turn
inside every repeat (interleaved, so background load hits all three alike); the table reports the median over
repeats of (engine time / training-step time), the 1-minute load average, and the largest relative difference
between the two engines' norms.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_grand_before_after.py --before f2e9eed --threads 1 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_grand import MODELS, data, make_model, train_step_fn  # noqa: E402

from lightning_datadiet import grand  # noqa: E402


def import_before(commit: str, folder: str):
    """``grand`` of ``commit``'s package, imported as ``ldd_before`` from a rewritten copy in ``folder``."""
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", commit, "lightning_datadiet"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    src = Path(folder, "lightning_datadiet").rename(Path(folder, "ldd_before"))
    for path in src.rglob("*.py"):
        path.write_text(path.read_text().replace("lightning_datadiet", "ldd_before"))
    sys.path.insert(0, folder)
    from ldd_before.scores.grand import grand as before  # type: ignore[import-not-found]

    return before


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="the earlier commit (any git revision)")
    p.add_argument("--models", default="cnn16,cnn32,resnet18_w16,vit")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        before = import_before(args.before, folder)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved "
              f"repeats, before = {args.before}; {time.strftime('%Y-%m-%d %H:%M')}")
        for name in args.models.split(","):
            model = make_model(name)
            x, y = data(torch.device("cpu"))
            fns = {"step": train_step_fn(model, x, y),
                   "before": lambda m=model, x=x, y=y: before(m, x, y, method="norms"),
                   "after": lambda m=model, x=x, y=y: grand(m, x, y, method="norms")}
            a, b = fns["before"](), fns["after"]()
            times: dict[str, list[float]] = {k: [] for k in fns}
            fns["step"]()
            for _ in range(args.repeats):
                for k, fn in fns.items():
                    t = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t)
            ratio = {k: statistics.median(u / s for u, s in zip(times[k], times["step"])) for k in ("before", "after")}
            results[name] = {"ratio": ratio, "step_s": statistics.median(times["step"]),
                             "max_rel_diff": float(((a - b).abs() / b).max()), "load": os.getloadavg()[0]}
            r = results[name]
            print(f"{MODELS[name]:48s} step {r['step_s'] * 1e3:7.0f} ms  before {ratio['before']:.2f}x  "
                  f"after {ratio['after']:.2f}x  max rel. diff {r['max_rel_diff']:.1e}  load {r['load']:.2f}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"before": args.before, "threads": torch.get_num_threads(), "repeats": args.repeats,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
