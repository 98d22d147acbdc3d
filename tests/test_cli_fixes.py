"""`datadiet` fixes of issue 9: run keys cover the data's content, report figures, analyze, --help, option errors."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_datadiet import pipeline, save_scores
from lightning_datadiet.cli import main
from lightning_datadiet.pipeline import PipelineConfig
from lightning_datadiet.pipeline.plan import data_key

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ content fingerprints


def test_array_fingerprint_sees_every_byte_dtype_and_shape():
    from lightning_datadiet.data.fingerprint import array_fingerprint

    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    fp = array_fingerprint(a, np.array([0, 1]))
    assert fp.startswith("sha256:") and fp == array_fingerprint(a.copy(), np.array([0, 1]))
    b = a.copy()
    b[1, 2, 3] ^= 1  # one bit of one pixel
    assert array_fingerprint(b, np.array([0, 1])) != fp
    assert array_fingerprint(a.reshape(3, 2, 4), np.array([0, 1])) != fp
    assert array_fingerprint(a.astype(np.int16), np.array([0, 1])) != fp
    assert array_fingerprint(a, np.array([1, 0])) != fp
    assert array_fingerprint(torch.from_numpy(a), torch.tensor([0, 1])) == fp  # tensors hash like arrays


def test_dataset_fingerprint_reads_length_labels_and_sampled_items():
    from lightning_datadiet.data.fingerprint import dataset_fingerprint, sample_indices

    class DictData(torch.utils.data.Dataset):  # Hugging Face style items
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return {"image": self.x[i], "label": int(self.y[i])}

    g = torch.Generator().manual_seed(0)
    x = torch.rand(100, 3, 4, 4, generator=g)
    y = torch.arange(100) % 3
    fp = dataset_fingerprint(DictData(x, y), labels=y, sample=10)
    assert fp == dataset_fingerprint(DictData(x.clone(), y.clone()), labels=y, sample=10)
    positions = sample_indices(100, 10)
    assert positions[0] == 0 and positions[-1] == 99 and len(positions) == 10
    x2 = x.clone()
    x2[positions[4], 0, 0, 0] += 1e-3  # a sampled item changes
    assert dataset_fingerprint(DictData(x2, y), labels=y, sample=10) != fp
    y2 = y.clone()
    y2[50] = (y2[50] + 1) % 3  # any label changes (labels are hashed in full)
    assert dataset_fingerprint(DictData(x, y2), labels=y2, sample=10) != fp
    assert dataset_fingerprint(DictData(x[:99], y[:99]), labels=y[:99], sample=10) != fp
    x3 = x.clone()
    x3[50] += 1  # not sampled: only a full read sees it
    assert dataset_fingerprint(DictData(x3, y), labels=y, sample=None) != dataset_fingerprint(
        DictData(x, y), labels=y, sample=None
    )
    with pytest.raises(TypeError, match="map-style"):
        dataset_fingerprint(iter([1, 2]))


def _image_folder(root: Path, classes: int, train: int, test: int, seed: int) -> Path:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*.png``: 32x32 RGB images, random pixels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                pixels[..., c % 3] = 200  # a learnable colour cue per class
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def _folder_options(data_dir: Path, out: Path) -> list[str]:
    return [
        "--dataset", "cifar10", "--data_dir", str(data_dir), "--output_dir", str(out), "--model", "small_cnn",
        "--width", "4", "--epochs", "1", "--el2n_epoch", "1", "--methods", "[el2n]", "--num_runs", "1",
        "--keep_fractions", "[0.5]", "--rules", "[highest]", "--seeds", "[0]", "--val_size", "6",
        "--label_noise", "[0.0]", "--num_workers", "0", "--batch_size", "32", "--tensorboard", "false",
        "--accelerator", "cpu", "--num_threads", "1",
    ]  # fmt: skip


def _run(argv: list[str]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return buf.getvalue()


@pytest.mark.slow
def test_another_folder_of_the_same_shape_is_scored_and_trained_again(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_DATADIET_CACHE", str(tmp_path / "cache"))
    a = _image_folder(tmp_path / "a", classes=3, train=20, test=4, seed=0)
    b = _image_folder(tmp_path / "b", classes=3, train=20, test=4, seed=1)  # same classes and counts
    out = tmp_path / "out"
    first = _run(["score", *_folder_options(a, out)]) + _run(["train", *_folder_options(a, out)])
    assert "done before, skipped" not in first and "0 done before, 3 to train" in first
    second = _run(["score", *_folder_options(b, out)]) + _run(["train", *_folder_options(b, out)])
    assert "done before, skipped" not in second  # the new images are read and scored
    assert "0 done before, 3 to train" in second
    again = _run(["score", *_folder_options(b, out)]) + _run(["train", *_folder_options(b, out)])
    assert "done before, skipped" in again and "3 done before, 0 to train" in again  # resume still works


def test_run_keys_follow_content_and_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_DATADIET_CACHE", str(tmp_path / "cache"))
    three = _image_folder(tmp_path / "three", classes=3, train=4, test=1, seed=0)
    ten = _image_folder(tmp_path / "ten", classes=10, train=4, test=1, seed=0)

    def keys(folder: Path) -> tuple[str, list[str]]:
        cfg = PipelineConfig(**{"dataset": "cifar10", "data_dir": str(folder), "output_dir": str(tmp_path / "o"),
                                "select_on_val": False, "methods": ["el2n"], "rules": ["highest"]}).validate()  # fmt: skip
        s = pipeline.settings(cfg)[0]
        return pipeline.score_dir(cfg, s).name, [r.key for r in pipeline.plan_retraining(cfg)]

    d3, k3 = keys(three)
    d10, k10 = keys(ten)
    assert d3 != d10 and not set(k3) & set(k10)  # a 3-class folder is not a 10-class one
    cfg = PipelineConfig(dataset="cifar10", data_dir=str(three), select_on_val=False).validate()
    data = data_key(cfg, pipeline.settings(cfg)[0])["content"]["content"]
    assert data["num_classes"] == 3 and data["train_items"] == 12 and data["test_items"] == 3
    # the same folder with one image replaced in place (same name, same size): new keys
    from PIL import Image

    img = tmp_path / "three" / "train" / "class1" / "002.png"
    pixels = np.asarray(Image.open(img)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(img)
    d3b, k3b = keys(three)
    assert d3b != d3 and not set(k3b) & set(k3)


def test_digits_key_holds_a_content_fingerprint(tmp_path):
    cfg = PipelineConfig(output_dir=str(tmp_path)).validate()
    content = data_key(cfg, pipeline.settings(cfg)[0])["content"]["content"]
    from sklearn.datasets import load_digits

    from lightning_datadiet.data.fingerprint import array_fingerprint

    d = load_digits()
    assert content["content"] == array_fingerprint(d.images, np.asarray(d.target, dtype=np.int64))
    assert content["num_classes"] == 10


# ------------------------------------------------------------------------------------------ report figures


@pytest.fixture
def captured_figures(monkeypatch):
    import matplotlib.figure

    figures = []
    real = matplotlib.figure.Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    return figures


def test_histogram_counts_never_learned_at_a_labelled_tick(tmp_path, captured_figures):
    cfg = PipelineConfig(output_dir=str(tmp_path), label_noise=[0.2], methods=["forgetting"], num_runs=1).validate()
    s = pipeline.settings(cfg)[0]
    scores = (torch.arange(1000) % 4).float()  # finite counts 0..3
    scores[:300] = float("inf")
    save_scores(pipeline.mean_score_path(cfg, s, "forgetting"), scores, method="forgetting")
    mask = torch.zeros(1000, dtype=torch.bool)
    mask[::5] = True  # corrupted labels stacked in red
    pipeline.plot_histograms(cfg, {s.name: mask}, tmp_path / "h.png")
    (fig,) = captured_figures
    (ax,) = fig.axes
    assert sum(p.get_height() for p in ax.patches) == pytest.approx(1000)  # all N examples
    ticks = dict(zip([t.get_text().replace("\n", " ") for t in ax.get_xticklabels()], ax.get_xticks()))
    assert ticks["never learned (inf)"] == pytest.approx(4.0)  # one past the largest finite count
    at_inf = [p for p in ax.patches if abs(p.get_x() + p.get_width() / 2 - 4.0) < 1e-6]
    assert sum(p.get_height() for p in at_inf) == pytest.approx(300)
    assert "300 of 1000 never learned" in ax.get_title()


def _results(keeps: list[float]) -> list[dict]:
    rows = []
    for setting in ("clean", "noise20-uniform"):
        for seed in (0, 1):
            rows.append({"setting": setting, "method": "full", "rule": "full", "keep_fraction": 1.0, "seed": seed,
                         "test_acc": 0.95 + 0.01 * seed, "val_acc": 0.9})  # fmt: skip
            for keep in keeps:
                for method, rule in (("random", "random"), ("el2n", "highest"), ("el2n", "coverage(beta=0.1)"),
                                     ("el2n", "window(skip=0.2)"), ("forgetting", "highest"),
                                     ("forgetting", "window(skip=0.2)")):  # fmt: skip
                    rows.append({"setting": setting, "method": method, "rule": rule, "keep_fraction": keep,
                                 "seed": seed, "test_acc": 0.5 + 0.4 * keep + 0.01 * seed, "val_acc": 0.8})  # fmt: skip
    return rows


def _curves(ax) -> dict[str, tuple]:
    handles, labels = ax.get_legend_handles_labels()
    out = {}
    for h, label in zip(handles, labels):
        line = h[0] if isinstance(h, tuple) or hasattr(h, "lines") else h
        out[label] = (line.get_color(), line.get_marker(), np.asarray(line.get_xdata(), dtype=float))
    return out


@pytest.mark.parametrize("keeps", [[0.3], [0.3, 0.7]])
def test_accuracy_plot_is_against_fraction_kept_with_rules_told_apart(tmp_path, keeps, captured_figures):
    cfg = PipelineConfig(output_dir=str(tmp_path), keep_fractions=keeps).validate()
    pipeline.plot_accuracy(cfg, _results(keeps), tmp_path / "a.png")
    (fig,) = captured_figures
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        assert "kept" in ax.get_xlabel() and "pruned" not in ax.get_xlabel()
        assert "accuracy" in ax.get_ylabel()
        curves = {k: v for k, v in _curves(ax).items() if not k.startswith("full data")}
        assert len(curves) == 6
        styles = [(c, m) for c, m, _ in curves.values()]
        assert len(set(styles)) == len(styles) and all(m not in (None, "", "None") for _, m in styles)
        for _, _, x in curves.values():
            if len(keeps) == 1:  # side by side around the kept fraction, never at the pruned one (0.7)
                assert np.all(np.abs(x - 0.3) < 0.2)
            else:
                assert x.tolist() == pytest.approx(keeps)
        # the panel title fits its panel
        title = ax.title.get_window_extent(renderer)
        panel = ax.get_window_extent(renderer)
        assert title.width <= panel.width and title.x0 >= panel.x0 - 1 and title.x1 <= panel.x1 + 1


# ------------------------------------------------------------------------------------------ analyze


def test_analyze_compares_methods_and_epochs_of_one_dataset(tmp_path, capsys):
    labels = torch.arange(50) % 5
    g = torch.Generator().manual_seed(0)
    a = save_scores(tmp_path / "x" / "el2n.scores", torch.rand(50, generator=g), method="el2n", epoch=3, labels=labels)
    b = save_scores(tmp_path / "forgetting.scores", torch.rand(50, generator=g), method="forgetting", epoch=10,
                    labels=labels)  # fmt: skip
    c = save_scores(tmp_path / "y" / "el2n.scores", torch.rand(50, generator=g), method="el2n", epoch=20, labels=labels)
    out = tmp_path / "an"
    assert main(["analyze", "--scores", f"[{a},{b},{c}]", "--output_dir", str(out)]) == 0
    text = (out / "stability.md").read_text()
    for name in ("x/el2n", "y/el2n", "forgetting"):  # same file names in two folders stay apart
        assert name in text
    assert "mean" not in text  # no mean over scores of different methods (different scales)
    assert "no mean column: the files hold different methods (el2n, forgetting)" in capsys.readouterr().out
    other = save_scores(tmp_path / "o.scores", torch.rand(50), method="grand", labels=torch.arange(50) % 4)
    assert main(["analyze", "--scores", f"[{a},{other}]", "--output_dir", str(out)]) == 2
    assert "label fingerprint" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ --help is light


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["--help"], ["no_such_stage"]])
def test_help_imports_neither_torch_nor_lightning(argv):
    """`datadiet --help` and the top-level errors stay light. (A stage's own --help lists the Trainer's arguments
    as LightningCLI does, read from Lightning's signature: it imports Lightning.)"""
    code = (
        "import sys, json\n"
        "from lightning_datadiet.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'matplotlib'))\n"
        "print(json.dumps(heavy), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    assert "demo" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------ option errors


@pytest.fixture
def no_training(monkeypatch):
    import lightning.pytorch as pl

    monkeypatch.setattr(pl.Trainer, "fit", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr(pl.Trainer, "__init__", lambda *a, **k: pytest.fail("a Trainer was built"))


def test_output_dir_that_is_a_file_or_under_a_file(tmp_path, capsys, no_training):
    file = tmp_path / "results.txt"
    file.write_text("x")
    assert main(["demo", "--output_dir", str(file)]) == 2
    err = capsys.readouterr().err
    assert "is an existing file, not a folder" in err and "Traceback" not in err
    assert main(["demo", "--output_dir", str(file / "sub" / "out")]) == 2
    assert "which is a file, not a folder" in capsys.readouterr().err
    assert main(["analyze", "--scores", "[a.scores,b.scores]", "--output_dir", str(file)]) == 2
    assert "is an existing file" in capsys.readouterr().err
    assert file.read_text() == "x"


def test_gpu_without_gpu_and_bogus_precision(tmp_path, capsys, monkeypatch, no_training):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    assert main(["demo", "--output_dir", str(out), "--accelerator", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "no GPU is visible" in err and "--accelerator cpu" in err
    assert main(["demo", "--output_dir", str(out), "--precision", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "--precision 'bogus' is not a Lightning precision" in err and "bf16-mixed" in err
    assert main(["demo", "--output_dir", str(out), "--accelerator", "tpux"]) == 2
    assert "--accelerator must be one of" in capsys.readouterr().err
    assert not out.exists()


def test_keep_fraction_one_reports_only_that(tmp_path, capsys, no_training):
    assert main(["demo", "--output_dir", str(tmp_path / "o"), "--keep_fractions", "[1]"]) == 2
    err = capsys.readouterr().err
    assert "--keep_fractions must lie strictly between 0 and 1" in err
    assert "window_skip" not in err


def test_data_dir_with_digits_is_refused(tmp_path, capsys, no_training):
    assert main(["demo", "--output_dir", str(tmp_path / "o"), "--data_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--data_dir applies to --dataset cifar10" in err and "Drop --data_dir" in err


# ------------------------------------------------------------------------------------------ packaging


def test_pyproject_license_is_an_spdx_string_without_deprecation_warnings():
    from setuptools.config.pyprojecttoml import read_configuration

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = read_configuration(ROOT / "pyproject.toml")  # what setuptools builds from
    assert not [w for w in caught if "license" in str(w.message).lower()]
    assert meta["project"]["license"] == "Apache-2.0"
    # the SPDX string form needs setuptools >= 77 (PEP 639)
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in meta["build-system"]["requires"])
