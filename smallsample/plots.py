"""Pictures: learning curves of a run and a grid of an episode's images (matplotlib, Agg)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def plot_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Training loss/accuracy and validation accuracy (+- 95% CI) of a run, as a PNG."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a run folder?")
    train, val = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e})") from e
        (val if "val_accuracy" in rec else train).append(rec)
    if not train:
        raise ValueError(f"{path} holds no training metrics yet")
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [r["step"] for r in train]
    ax_loss.plot(steps, [r["loss"] for r in train], label="train loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("query cross-entropy")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_acc.plot(steps, [r["accuracy"] for r in train], label="train (query) accuracy", alpha=0.7)
    if val:
        vs = np.array([r["step"] for r in val])
        va = np.array([r["val_accuracy"] for r in val])
        vc = np.array([r["val_ci95"] for r in val])
        ax_acc.errorbar(vs, va, yerr=vc, marker="o", capsize=3, label="validation accuracy")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_episode(episode, out: str | Path, *, title: str = "") -> Path:
    """A grid of one episode: a row per class, support images then query images, labelled."""
    sx, sy, qx, qy = (np.asarray(a) for a in episode)
    if sx.ndim != 4:
        raise ValueError(f"plot_episode needs one episode with images [n, H, W, C], got "
                         f"support_x of shape {sx.shape}")
    ways = int(sy.max()) + 1
    shots, queries = len(sy) // ways, len(qy) // ways
    cols = shots + min(queries, 8)
    plt = _pyplot()
    fig, axes = plt.subplots(ways, cols, figsize=(cols * 0.9, ways * 0.9 + 0.4), squeeze=False)
    for c in range(ways):
        imgs = [(x, "S") for x in sx[sy == c]] + [(x, "Q") for x in qx[qy == c]][: cols - shots]
        for j, ax in enumerate(axes[c]):
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(imgs):
                img, kind = imgs[j]
                cmap = "gray_r" if img.shape[-1] == 1 else None
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap=cmap, vmin=0, vmax=1)
                ax.set_title(f"{kind} y={c}", fontsize=6)
                if kind == "S":
                    for s in ax.spines.values():
                        s.set_color("tab:blue")
                        s.set_linewidth(2)
    fig.suptitle(title or f"{ways}-way {shots}-shot episode (S: support, Q: query)", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
