"""The benchmark's plot (PNG, needs matplotlib: `pip install 'ecsnap[bench]'`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# (label, summary) of every contender that ran, in the plot's order (top to bottom).
_Rows = list[tuple[str, Mapping[str, Any]]]
_RECOVERY_BAR = 0.38  # bar height: trainer kill above, cold cache / node loss below


def _throughput_axis(ax: Any, ok: _Rows) -> None:
    for y, (_, s) in enumerate(ok):
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
    ax.set_yticks(list(range(len(ok))), [label for label, _ in ok])
    ax.invert_yaxis()


def _blocked_axis(ax: Any, ok: _Rows) -> None:
    for y, (_, s) in enumerate(ok):
        b = s.get("blocked_s")
        if b:
            ax.barh(y, b["mean"] * 1e3, color="tab:orange")
            ax.plot(b["max"] * 1e3, y, "k|", markersize=12)
            ax.text(b["mean"] * 1e3, y, f" {b['mean'] * 1e3:.1f}", va="center", fontsize=8)
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("blocked per checkpoint, ms (mean; | = max; log)")


def _recovery_bars(
    ax: Any, y: float, phase: Mapping[str, Any] | None, colors: tuple[str, str]
) -> None:
    """Recovery (relaunch to first step) with its loading part drawn over it, darker."""
    if phase and phase["recovery_s"]:
        ax.barh(y, phase["recovery_s"]["median"], _RECOVERY_BAR, color=colors[0])
        if phase["load_s"]:
            ax.barh(y, phase["load_s"]["median"], _RECOVERY_BAR, color=colors[1])


def _recovery_axis(ax: Any, ok: _Rows) -> None:
    h = _RECOVERY_BAR
    for y, (_, s) in enumerate(ok):
        _recovery_bars(ax, y - h / 2, s.get("kill"), ("tab:green", "darkgreen"))
        _recovery_bars(ax, y + h / 2, s.get("cold") or s.get("node_loss"), ("tab:red", "darkred"))
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


def _title(data: Mapping[str, Any], bad: list[str]) -> str:
    c, m = data["config"], data["machine"]
    title = (
        f"ecsnap bench train: {c['nodes']}x{c['ranks_per_node']} ranks, "
        f"{c['state_bytes_per_rank'] / (1 << 20):.0f} MiB state/rank, {m['cores']} cores "
        f"{m['device']}; median of {c['repeats']}"
    )
    if bad:
        title += f"; FAILED: {', '.join(bad)}"
    return title


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
    fig, axes = plt.subplots(1, 3, figsize=(16, 0.55 * len(ok) + 2.4), sharey=True)
    _throughput_axis(axes[0], ok)
    _blocked_axis(axes[1], ok)
    _recovery_axis(axes[2], ok)
    fig.suptitle(_title(data, bad))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot: {path}"
