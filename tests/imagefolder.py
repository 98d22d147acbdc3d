"""A tiny learnable ImageFolder dataset (train/ and test/, one folder per class) written as PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40))


def make_image_folder(root: Path, classes: int = 3, train: int = 60, test: int = 20, size: int = 32, seed: int = 0) -> Path:
    """``root/train/class<k>/<i>.png`` and ``root/test/...``: noisy images whose mean colour depends on the class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("test", test)):
        for k in range(classes):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.array(COLOURS[k % len(COLOURS)], dtype=np.float64)
                img = base + rng.normal(0, 60, (size, size, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root
