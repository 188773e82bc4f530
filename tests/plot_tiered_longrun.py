"""Plots of the tiered long run: memory per tier, move cost, and an animation of the tier fill.

Reads the JSON written by bench_tiered_longrun.py (running it first when the file is missing) and
renders assets/tiered_mem.png (stacked MB per tier vs generation, budgets as lines),
assets/tiered_cost.png (move ms per generation) and assets/tiered_longrun.gif (tier fill bars,
one frame per generation).

    python tests/plot_tiered_longrun.py [--json bench_tiered_longrun.json] [--assets assets]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TIERS = ("GPU", "CPU", "disk")
COLORS = ("#4c78a8", "#f58518", "#54a24b")


def load(path: Path) -> dict:
    """The long-run report, produced by running the benchmark if it is not there yet."""
    if not path.exists():
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_tiered_longrun

        bench_tiered_longrun.main(["--out", str(path)])
    return json.loads(path.read_text())


def _budgets(report: dict) -> list[float]:
    cfg = report["config"]
    return [cfg["gpu_mb"], cfg["cpu_mb"], cfg["disk_mb"]]


def _subtitle(report: dict) -> str:
    cfg = report["config"]
    return (f"{cfg['mb_per_gen']:g} MB fresh cache per generation ({cfg['entries_per_gen']} residuals of "
            f"{cfg['entry_mb']:.3g} MB), device {report['device']}")


def _milestone_lines(ax, report: dict) -> None:
    labels = {"cpu_engages": "CPU engages", "disk_engages": "disk engages", "eviction_from": "eviction starts"}
    for name, label in labels.items():
        gen = report["milestones"].get(name)
        if gen is not None:
            ax.axvline(gen, color="0.5", lw=0.8, ls=":")
            ax.annotate(label, (gen, 0.5), xycoords=("data", "axes fraction"), rotation=90, va="center",
                        ha="right", fontsize=8, color="0.25", xytext=(-2, 0), textcoords="offset points",
                        bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.7))


def plot_memory(report: dict, out: Path) -> None:
    """Stacked MB per tier against generation, with cumulative budgets as dashed lines."""
    rows = report["generations"]
    gens = [r["generation"] for r in rows]
    per_tier = list(zip(*[r["tier_mb"] for r in rows]))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.stackplot(gens, per_tier, labels=[f"{t} tier" for t in TIERS], colors=COLORS, alpha=0.85, step="mid")
    cumulative = 0.0
    for tier, budget, color in zip(TIERS, _budgets(report), COLORS):
        cumulative += budget
        ax.axhline(cumulative, color=color, ls="--", lw=1.2)
        ax.text(gens[-1], cumulative, f"{'+'.join(TIERS[:TIERS.index(tier) + 1])} budget {cumulative:g} MB",
                va="bottom", ha="right", fontsize=8, color=color,
                bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.8))
    _milestone_lines(ax, report)
    ax.set(xlabel="generation", ylabel="MB held", xlim=(gens[0] - 0.5, gens[-1] + 0.5),
           ylim=(0, cumulative * 1.12))
    fig.suptitle("Tiered cache store: MB per tier over a long run")
    ax.set_title(_subtitle(report), fontsize=8, color="0.3")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_cost(report: dict, out: Path) -> None:
    """Time spent moving entries between tiers (spills and evictions) per generation."""
    rows = report["generations"]
    gens = [r["generation"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    ax.bar(gens, [r["move_ms"] for r in rows], color="#b279a2", label="move / spill time")
    ax.plot(gens, [r["put_ms"] for r in rows], color="0.2", marker=".", lw=1, label="all puts of the generation")
    _milestone_lines(ax, report)
    top = max([r["put_ms"] for r in rows] + [r["move_ms"] for r in rows] + [1e-3])
    ax.set(xlabel="generation", ylabel="ms per generation", xlim=(gens[0] - 0.5, gens[-1] + 0.5),
           ylim=(0, top * 1.35))  # headroom for the legend
    fig.suptitle("Tiered cache store: cost of moving data per generation")
    ax.set_title(_subtitle(report), fontsize=8, color="0.3")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _frame(report: dict, row: dict) -> Image.Image:
    budgets = _budgets(report)
    fig, ax = plt.subplots(figsize=(6.4, 2.8), dpi=80)
    fills = [mb / budget for mb, budget in zip(row["tier_mb"], budgets)]
    ax.barh(range(3), [1] * 3, color="0.92", edgecolor="0.6")
    ax.barh(range(3), fills, color=COLORS)
    for i, (mb, budget) in enumerate(zip(row["tier_mb"], budgets)):
        ax.text(0.01, i, f"{mb:.0f} / {budget:g} MB", va="center", fontsize=9, color="black")
    ax.set_yticks(range(3), TIERS)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xticks([0, 0.5, 1], ["0%", "50%", "100%"])
    evicted = f", {row['evictions']} evicted" if row["evictions"] else ""
    ax.set_title(f"generation {row['generation']}: total {row['total_mb']:.0f} MB, moves {row['move_ms']:.1f} ms"
                 f"{evicted}", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("P", palette=Image.ADAPTIVE, colors=64)


def animate(report: dict, out: Path, frame_ms: int = 350) -> None:
    """One frame per generation of the tier fill bars, looping, written with Pillow."""
    frames = [_frame(report, row) for row in report["generations"]]
    durations = [frame_ms] * (len(frames) - 1) + [frame_ms * 6]  # linger on the steady state
    frames[0].save(out, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=True)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="bench_tiered_longrun.json", help="report of bench_tiered_longrun.py")
    parser.add_argument("--assets", default=str(ROOT / "assets"), help="output folder")
    args = parser.parse_args(argv)
    report = load(Path(args.json))
    assets = Path(args.assets)
    assets.mkdir(parents=True, exist_ok=True)
    outputs = [assets / "tiered_mem.png", assets / "tiered_cost.png", assets / "tiered_longrun.gif"]
    plot_memory(report, outputs[0])
    plot_cost(report, outputs[1])
    animate(report, outputs[2])
    for path in outputs:
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")
    return outputs


if __name__ == "__main__":
    main()
