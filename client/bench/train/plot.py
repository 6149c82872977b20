"""The benchmark's plot (PNG, needs matplotlib: `pip install 'ecsnap[bench]'`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def plot(data: Mapping[str, Any], path: str) -> str:
    """Write the PNG; returns a line saying what happened (never raises for a missing library)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (
            "plot skipped: matplotlib is not installed (pip install 'ecsnap[bench]'); "
            "the table and the JSON have every figure"
        )
    ok = [(e["label"], e["summary"]) for e in data["contenders"].values() if e["status"] == "ok"]
    bad = [e["label"] for e in data["contenders"].values() if e["status"] != "ok"]
    if not ok:
        return "plot skipped: no contender ran"
    labels = [label for label, _ in ok]
    ys = list(range(len(ok)))
    fig, axes = plt.subplots(1, 3, figsize=(16, 0.55 * len(ok) + 2.4), sharey=True)
    ax = axes[0]
    for y, (_, s) in zip(ys, ok, strict=True):
        r = s.get("throughput_vs_baseline")
        if r:
            ax.barh(y, r["median"], color="tab:blue")
            ax.errorbar(
                r["median"],
                y,
                xerr=[[r["median"] - r["min"]], [r["max"] - r["median"]]],
                color="black",
                capsize=3,
            )
            ax.text(r["median"], y, f" {r['median']:.2f}", va="center", fontsize=8)
    ax.axvline(0.95, color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel("training throughput / baseline (median, min..max)")
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    ax = axes[1]
    for y, (_, s) in zip(ys, ok, strict=True):
        b = s.get("blocked_s")
        if b:
            ax.barh(y, b["mean"] * 1e3, color="tab:orange")
            ax.plot(b["max"] * 1e3, y, "k|", markersize=12)
            ax.text(b["mean"] * 1e3, y, f" {b['mean'] * 1e3:.1f}", va="center", fontsize=8)
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("blocked per checkpoint, ms (mean; | = max; log)")
    ax = axes[2]
    h = 0.38
    for y, (_, s) in zip(ys, ok, strict=True):
        kill = s.get("kill")
        other = s.get("cold") or s.get("node_loss")
        if kill and kill["recovery_s"]:
            ax.barh(y - h / 2, kill["recovery_s"]["median"], h, color="tab:green")
            if kill["load_s"]:
                ax.barh(y - h / 2, kill["load_s"]["median"], h, color="darkgreen")
        if other and other["recovery_s"]:
            ax.barh(y + h / 2, other["recovery_s"]["median"], h, color="tab:red")
            if other["load_s"]:
                ax.barh(y + h / 2, other["load_s"]["median"], h, color="darkred")
    ax.set_xlabel("recovery: relaunch to first step, s (dark: loading)")
    from matplotlib.patches import Patch

    ax.legend(
        handles=[
            Patch(color="tab:green", label="trainer kill"),
            Patch(color="tab:red", label="disk: cold cache / ecsnap: node loss"),
        ],
        fontsize=8,
        loc="best",
    )
    c, m = data["config"], data["machine"]
    title = (
        f"ecsnap bench train: {c['nodes']}x{c['ranks_per_node']} ranks, "
        f"{c['state_bytes_per_rank'] / (1 << 20):.0f} MiB state/rank, {m['cores']} cores "
        f"{m['device']}; median of {c['repeats']}"
    )
    if bad:
        title += f"; FAILED: {', '.join(bad)}"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot: {path}"
