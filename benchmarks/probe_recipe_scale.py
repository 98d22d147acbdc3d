"""One full-data fit of the airbench recipe at a given size, for sizing `datadiet reproduce --scale cpu`.

    PYTHONPATH=. python benchmarks/probe_recipe_scale.py N EPOCHS WIDTH BATCH LR [THREADS]
    # e.g. 50000 4 16 256 0.15 2  -> "n=50000 epochs=4 ...: test acc 0.81.. in ... s"

Trains on the first N (class-stratified) CIFAR-10 training images of ../shared/data/cifar10-jpeg.zip (say so and stop
when it is missing; DATA= and ACCELERATOR=gpu override) with the study's own building blocks and prints the test accuracy it measures and the wall time.
"""

import os
import sys
import time
from pathlib import Path

from lightning.pytorch import seed_everything

from lightning_datadiet.pipeline import PipelineConfig
from lightning_datadiet.pipeline.build import (
    AccuracyCallback,
    make_datamodule,
    make_module,
    make_trainer,
    quiet_lightning,
)

DATA = Path(os.environ.get("DATA", "../shared/data/cifar10-jpeg.zip"))
ACCELERATOR = os.environ.get("ACCELERATOR", "cpu")  # gpu: with bf16-mixed, as the gpu scale


def main() -> None:
    if not DATA.exists():
        sys.exit(f"{DATA} is missing: this probe needs the shared CIFAR-10 (see ../shared/data/README.md).")
    n, epochs, width, batch, lr = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    threads = int(sys.argv[6]) if len(sys.argv) > 6 else None
    cfg = PipelineConfig(
        model="airbench", data_dir=str(DATA), train_subset=n if n < 50000 else None, epochs=epochs, width=width,
        batch_size=batch, lr=lr, select_on_val=False, label_noise=[0.0], accelerator=ACCELERATOR, tensorboard=False,
        precision="bf16-mixed" if ACCELERATOR == "gpu" else None,
        num_threads=threads,
    ).validate()  # fmt: skip
    with quiet_lightning(cfg):
        dm = make_datamodule(cfg, 0.0)
        seed_everything(0, verbose=False)
        module = make_module(cfg)
        accuracy = AccuracyCallback(val=False)
        start = time.perf_counter()
        make_trainer(cfg, epochs, logger=False, callbacks=[accuracy]).fit(module, datamodule=dm)
        took = time.perf_counter() - start
    print(f"n={n} epochs={epochs} width={width} batch={batch} lr={lr}: test acc {accuracy.results['test']:.4f} in {took:.0f} s")


if __name__ == "__main__":
    main()
