"""The ``datadiet report`` figures: test accuracy against the fraction of training data kept, and score histograms.

Both draw on a bare :class:`matplotlib.figure.Figure` with the Agg canvas (no global pyplot state) and are written
atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_datadiet._utils import atomic_write_bytes
from lightning_datadiet.pipeline.plan import describe, mean_score_path, settings
from lightning_datadiet.pipeline.results import group, summary_stats
from lightning_datadiet.store import load_scores

__all__ = ["plot_accuracy", "plot_histograms", "NEVER_LEARNED_LABEL"]

NEVER_LEARNED_LABEL = "never learned (inf)"
_METHOD_COLORS = {"el2n": "tab:blue", "grand": "tab:orange", "forgetting": "tab:green"}
_RULE_MARKERS = {"highest": "o", "lowest": "v", "coverage": "s"}
_WINDOW_MARKERS = "D^<>Ph*pX"
_RULE_STYLES = {"highest": "-", "lowest": "-.", "coverage": "--"}


def _figure(width: float, height: float) -> Any:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path, dpi: int) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")  # legends outside the panels are kept whole
    atomic_write_bytes(path, buffer.getbuffer())
    return path


def _setting_title(cfg: Any, name: str) -> str:
    noise = next(s.label_noise for s in settings(cfg) if s.name == name)
    return "clean labels" if noise == 0 else f"{noise:.0%} label noise ({cfg.noise_mode})"


def _rule_marker(rule: str, windows: dict[str, str]) -> str:
    base = rule.split("(")[0]
    if base == "window":
        return windows.setdefault(rule, _WINDOW_MARKERS[len(windows) % len(_WINDOW_MARKERS)])
    return _RULE_MARKERS.get(base, "o")


def plot_accuracy(cfg: Any, results: list[dict[str, Any]], path: Path) -> Path:
    """Test accuracy against the fraction of the training set **kept** (as in every table), one panel per
    setting: one line per (method, rule) with the 16th-84th percentile band over seeds, the random-subset
    baseline and the full-data level. Colour = method, marker = rule, so rules stay apart even with a single
    keep fraction (then the points are drawn side by side with percentile bars instead of lines and bands)."""
    groups = group(results)
    names = [s.name for s in settings(cfg)]
    fractions = sorted({float(f) for (_s, m, _r, f) in groups if m != "full"}) or sorted(cfg.keep_fractions)
    single = len(fractions) == 1
    fig = _figure(4.8 * len(names), 4.2)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    windows: dict[str, str] = {}
    for ax, name in zip(axes, names):
        full = groups.get((name, "full", "full", 1.0))
        if full:
            m, lo, hi = summary_stats(full)
            ax.axhline(m, color="black", lw=1.2, label=f"full data ({len(full)} seeds)")
            ax.axhspan(lo, hi, color="black", alpha=0.08)
        curves = sorted(
            {(mth, rule) for (s, mth, rule, _f) in groups if s == name and mth != "full"},
            key=lambda t: (t[0] != "random", t),
        )
        span = 0.6 * (fractions[0] if single else min(np.diff(fractions)))  # side-by-side spread, one fraction
        for k, (method, rule) in enumerate(curves):
            pts = sorted(
                (float(f), summary_stats(v))
                for (s, m, r, f), v in groups.items()
                if (s, m, r) == (name, method, rule)
            )
            x = np.array([p[0] for p in pts])
            mean = np.array([p[1][0] for p in pts])
            lo = np.array([p[1][1] for p in pts])
            hi = np.array([p[1][2] for p in pts])
            if method == "random":
                style: dict[str, Any] = {"color": "gray", "ls": ":", "marker": "x"}
                label = "random subset"
            else:
                base = rule.split("(")[0]
                style = {
                    "color": _METHOD_COLORS.get(method, "tab:purple"),
                    "ls": _RULE_STYLES.get(base, (0, (1, 1))),
                    "marker": _rule_marker(rule, windows),
                }
                label = f"{method} {rule}"
            if single:
                dx = span * ((k + 0.5) / max(len(curves), 1) - 0.5)
                ax.errorbar(
                    x + dx, mean, yerr=[mean - lo, hi - mean], ls="none", ms=6, capsize=2, label=label,
                    color=style["color"], marker=style["marker"],
                )  # fmt: skip
            else:
                ax.plot(x, mean, label=label, ms=5, lw=1.4, **style)
                ax.fill_between(x, lo, hi, color=style["color"], alpha=0.12)
        ax.set_title(_setting_title(cfg, name), fontsize=10)
        ax.set_xlabel("fraction of training data kept")
        ax.set_ylabel("test accuracy")
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        if single:
            ax.set_xlim(fractions[0] - span, fractions[0] + span)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(
        f"{describe(cfg)}, budget {cfg.budget}: mean over seeds; "
        f"{'bars' if single else 'bands'} = 16th-84th percentile",
        fontsize=9,
    )
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def _histogram(ax: Any, scores: Any, mask: Any, method: str, grid: float | None = None) -> int:
    """One panel: the finite scores in 40 bins (or one bin per multiple of ``grid``: forgetting counts averaged
    over R runs lie on multiples of 1/R), and every ``+inf`` (never learned) as one bar at a labelled tick one past
    the largest finite score; corrupted labels stacked in red. Returns the number of ``+inf``."""
    values = scores.double().numpy()
    inf = np.isposinf(values)
    finite_mask = np.isfinite(values)
    finite = values[finite_mask]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    width_range = hi - lo if hi > lo else 1.0
    if grid is not None and (hi - lo) / grid <= 200:
        bins = np.arange(lo - grid / 2, hi + grid, grid)
    else:
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 41)
    corrupt = (
        mask.numpy().astype(bool) if mask is not None and bool(mask.any()) else np.zeros(len(values), bool)
    )
    stacked = bool(corrupt.any())
    groups = [~corrupt, corrupt] if stacked else [np.ones(len(values), bool)]
    colors = ["tab:blue", "tab:red"][: len(groups)]
    labels = ["clean label", "corrupted label"][: len(groups)]
    ax.hist([values[g & finite_mask] for g in groups], bins=bins, stacked=True, color=colors, label=labels)
    n_inf = int(inf.sum())
    ax.set_xlabel(f"{method} score")
    ax.set_ylabel("examples")
    if n_inf:
        step = 1.0 if method == "forgetting" else max(0.1 * width_range, 1e-3)
        where = hi + step  # one past the largest finite count (forgetting)
        bar = bins[1] - bins[0] if grid is not None else max(bins[1] - bins[0], 0.4 * step)
        bottom = 0
        for g, color in zip(groups, colors):
            count = int((g & inf).sum())
            ax.bar([where], [count], width=bar, bottom=bottom, color=color, edgecolor="black", lw=0.6)
            bottom += count
        ticks = [t for t in ax.get_xticks() if lo - 1e-9 <= t <= hi + 1e-9 and where - t > 0.6 * step]
        ax.set_xticks([*ticks, where], [f"{t:g}" for t in ticks] + [NEVER_LEARNED_LABEL.replace(" (", "\n(")])
        ax.set_xlim(min(bins[0], lo - 0.02 * width_range), where + bar)
    if stacked:
        ax.legend(fontsize=7)
    return n_inf


def plot_histograms(cfg: Any, masks: dict[str, Any], path: Path) -> Path | None:
    """Histograms of the averaged scores, one row per setting and one column per method. Every example is
    counted: ``+inf`` (never learned) is one bar at the tick labelled ``never learned (inf)``, one past the largest
    finite score (one past the largest finite count for forgetting). Corrupted labels are stacked in red."""

    if not cfg.methods:
        return None
    sets = settings(cfg)
    fig = _figure(4.2 * len(cfg.methods), 3.4 * len(sets))
    axes = fig.subplots(len(sets), len(cfg.methods), squeeze=False)
    for row, s in zip(axes, sets):
        for ax, method in zip(row, cfg.methods):
            p = mean_score_path(cfg, s, method)
            if not p.exists():
                ax.set_axis_off()
                continue
            scores = load_scores(p).scores
            grid = 1.0 / cfg.num_runs if method == "forgetting" else None
            n_inf = _histogram(ax, scores, masks.get(s.name), method, grid)
            title = f"{s.name}: {method}, mean of {cfg.num_runs} run(s)"
            if n_inf:
                title += f"\n{n_inf} of {len(scores)} never learned (inf)"
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi=100)
