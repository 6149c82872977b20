"""Figures from the raw runs: summary per contender, target checks, the stdout table, the PNG.

Only contenders that ran are summarized; a contender that failed is shown as failed with its error
and no figures.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ecsnap.bench.train.base import Spec


def stats(values: Iterable[float | None]) -> dict[str, float] | None:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return {
        "median": statistics.median(vals),
        "mean": statistics.fmean(vals),
        "min": min(vals),
        "max": max(vals),
        "n": float(len(vals)),
    }


def _loop_s(run: Mapping[str, Any]) -> float:
    return max(float(r["loop_s"]) for r in run["train"]["ranks"])


def _steps_per_s(run: Mapping[str, Any]) -> float:
    return float(run["train"]["ranks"][0]["steps"]) / _loop_s(run)


def summarize(
    spec: Spec, runs: list[dict[str, Any]], baseline: Mapping[int, float]
) -> dict[str, Any]:
    sps = [_steps_per_s(r) for r in runs]
    rel = [_steps_per_s(r) / baseline[r["repeat"]] for r in runs if r["repeat"] in baseline]
    step_s = stats(1.0 / v for v in sps)
    ckpts = [c for r in runs for rank in r["train"]["ranks"] for c in rank["checkpoints"]]
    per_run_blocked = [
        statistics.fmean(
            c["blocked_s"] for rank in r["train"]["ranks"] for c in rank["checkpoints"]
        )
        for r in runs
        if any(rank["checkpoints"] for rank in r["train"]["ranks"])
    ]
    s: dict[str, Any] = {
        "label": spec.label,
        "kind": spec.kind,
        "interval": spec.interval,
        "parity": spec.parity,
        "runs": len(runs),
        "steps_per_s": stats(sps),
        "step_s": step_s,
        "throughput_vs_baseline": stats(rel),
        "checkpoints": len(ckpts),
        "blocked_s": stats(c["blocked_s"] for c in ckpts),
        "blocked_s_per_run_mean": stats(per_run_blocked),
        "safe_s": stats(c["safe_s"] for c in ckpts),
        # On disk: a disk contender's checkpoint once safe, ecsnap's once its durable tier wrote it.
        "durable_s": stats(c.get("durable_s") if spec.ecsnap else c["safe_s"] for c in ckpts),
        "copy_s": stats(c.get("copy_s") for c in ckpts),
        "first_save_blocked_s": stats(
            rank["warmup_checkpoints"][0]["blocked_s"]
            for r in runs
            for rank in r["train"]["ranks"]
            if rank["warmup_checkpoints"]
        ),
        "trainer_max_rss_bytes": stats(
            max(rank["max_rss_bytes"] for rank in r["train"]["ranks"]) for r in runs
        ),
        "smp_vm_hwm_bytes": stats(
            max(m["vm_hwm_bytes"] for m in r["smp_memory"]) for r in runs if r["smp_memory"]
        ),
        "smp_arena_bytes": stats(
            max(m["arena_bytes"] for m in r["smp_memory"]) for r in runs if r["smp_memory"]
        ),
    }
    for key in ("kill", "cold", "node_loss"):
        if any(key in r for r in runs):
            s[key] = {
                f: stats(r[key][f] for r in runs if key in r)
                for f in ("recovery_s", "load_s", "startup_s", "import_s")
            }
    # Work lost per failure, in steps: a failure at a uniformly random moment loses the time
    # since the newest *safe* checkpoint: N/2 steps plus the safe latency on average, N plus it
    # at worst (N = interval, latency in steps = median time-to-safe / median step time).
    if spec.interval and step_s is not None and s["safe_s"] is not None:
        lag = s["safe_s"]["median"] / step_s["median"]
        s["work_lost_steps"] = {"mean": spec.interval / 2 + lag, "worst": spec.interval + lag}
    return s


def build(
    config: dict[str, Any],
    machine: dict[str, Any],
    known: Mapping[str, Spec],
    names: list[str],
    runs: Mapping[str, list[dict[str, Any]]],
    errors: Mapping[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    base_ok = "baseline" in names and not errors.get("baseline")
    baseline = {r["repeat"]: _steps_per_s(r) for r in runs.get("baseline", [])} if base_ok else {}
    contenders: dict[str, Any] = {}
    for name in names:
        spec = known[name]
        entry: dict[str, Any] = {"label": spec.label, "raw_runs": runs[name]}
        if errors[name]:
            entry["status"] = "failed"
            entry["errors"] = errors[name]
        else:
            entry["status"] = "ok"
            entry["summary"] = summarize(spec, runs[name], baseline)
        contenders[name] = entry
    data: dict[str, Any] = {"config": config, "machine": machine, "contenders": contenders}
    data["targets"] = targets(data)
    return data


def _get(data: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    entry = data["contenders"].get(name)
    if entry is None or entry["status"] != "ok":
        return None
    summary: dict[str, Any] = entry["summary"]
    return summary


def _med(s: Mapping[str, Any] | None, *path: str) -> float | None:
    cur: Any = s
    for key in path:
        if not isinstance(cur, Mapping) or cur.get(key) is None:
            return None
        cur = cur[key]
    return float(cur["median"]) if isinstance(cur, Mapping) and "median" in cur else None


def _mean(s: Mapping[str, Any] | None, key: str) -> float | None:
    if s is None or s.get(key) is None:
        return None
    return float(s[key]["mean"])


@dataclass
class _Checks:
    """The target checks of one subject (the ecsnap contender they are about), as they are made."""

    subject: str
    note: str
    out: list[dict[str, Any]] = field(default_factory=list)

    def check(self, name: str, value: float | None, goal: float, higher: bool, detail: str) -> None:
        met = None if value is None else (value >= goal if higher else value <= goal)
        self.out.append(
            {
                "target": name + self.note,
                "subject": self.subject,
                "value": value,
                "goal": goal,
                "met": met,
                "detail": detail if value is not None else "not measured: " + detail,
            }
        )


def _throughput_targets(data: Mapping[str, Any], e: Mapping[str, Any], checks: _Checks) -> None:
    rel = _med(e, "throughput_vs_baseline")
    base = _get(data, "baseline")
    step = _med(base, "step_s")
    copy = _med(e, "copy_s")
    ratio = f"step compute / state copy = {step / copy:.1f}x" if step and copy else ""
    checks.check("throughput >= 95% of baseline", rel, 0.95, True, ratio)
    dcpa = _get(data, "dcp_async")
    dcpa_rel = _med(dcpa, "throughput_vs_baseline")
    n = data["config"]["interval"]
    for who in (checks.subject + "_n", checks.subject):
        mine = _med(_get(data, who), "throughput_vs_baseline")
        value = None if mine is None or dcpa_rel is None else mine / dcpa_rel
        what = f"every {n}" if who.endswith("_n") else f"every step vs DCP's every {n}"
        checks.check(
            f"throughput better than DCP async_save ({what})",
            value,
            1.0,
            True,
            f"{who} / dcp_async throughput",
        )


def _blocked_targets(data: Mapping[str, Any], e: Mapping[str, Any], checks: _Checks) -> None:
    blocked = _mean(e, "blocked_s")
    for other, goal in (("dcp_async", 10.0), ("torch_save", 50.0)):
        theirs = _mean(_get(data, other), "blocked_s")
        value = None if blocked is None or theirs is None or blocked == 0 else theirs / blocked
        checks.check(
            f"blocked per snapshot <= 1/{goal:g} of {other}",
            value,
            goal,
            True,
            f"{other} mean blocked / {checks.subject} mean blocked",
        )


def _recovery_targets(data: Mapping[str, Any], e: Mapping[str, Any], checks: _Checks) -> None:
    recoveries = (  # (our failure, theirs, goal, what the target says, what the ratio is)
        ("kill", "kill", 5.0, "trainer kill", "{other} / {subject} relaunch-to-first-step"),
        ("node_loss", "cold", 2.0, "node loss",
         "{other} (page cache dropped) / {subject} after node loss"),
    )  # fmt: skip
    for ours, theirs_phase, goal, failure, ratio_of in recoveries:
        mine = _med(e, ours, "recovery_s")
        mine_load = _med(e, ours, "load_s")
        for other in ("torch_save", "dcp_save", "dcp_async"):
            s = _get(data, other)
            theirs = _med(s, theirs_phase, "recovery_s")
            value = None if mine is None or theirs is None else theirs / mine
            load = _med(s, theirs_phase, "load_s")
            detail = ratio_of.format(other=other, subject=checks.subject)
            if load and mine_load:
                detail += f"; load only: {load / mine_load:.1f}x"
            checks.check(
                f"recovery after {failure} >= {goal:g}x faster than {other}",
                value,
                goal,
                True,
                detail,
            )


def targets(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for ecsnap with a snapshot every step and parity on."""
    subject, note = "ecsnap_parity", ""
    e = _get(data, subject)
    if e is None and _get(data, "ecsnap") is not None:
        subject, note, e = "ecsnap", " [parity on did not run: measured with parity off]", None
        e = _get(data, "ecsnap")
    checks = _Checks(subject, note)
    if e is None:
        return checks.out
    _throughput_targets(data, e, checks)
    _blocked_targets(data, e, checks)
    _recovery_targets(data, e, checks)
    return checks.out


# -- text ---------------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"


def _spread(s: Mapping[str, float] | None, fmt: str = "{:.3f}") -> str:
    if s is None:
        return "-"
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}..{fmt.format(s['max'])}]"


def _mib(v: float | None) -> str:
    return "-" if v is None else f"{v / (1 << 20):.0f} MiB"


def _sec(s: Mapping[str, Any] | None, key: str) -> str:
    if s is None or s.get(key) is None:
        return "-"
    r, load = s[key]["recovery_s"], s[key]["load_s"]
    if r is None:
        return "-"
    return (
        f"{r['median']:.2f} s [{r['min']:.2f}..{r['max']:.2f}] "
        f"(load {_ms(load['median'] if load else None)})"
    )


_LEGEND = (
    "",
    "blocked = time the training loop waited for a checkpoint (ecsnap: in save() plus the "
    "optimizer fence);",
    "safe = checkpoint start until fsynced on disk / committed by the SMPs; on disk = until "
    "fsynced on disk (ecsnap: by its durable tier, persisting every N);",
    "recovery = relaunch until the first step",
    "after loading is done (load = loading alone); baseline: a fresh start, nothing loaded.",
)


def _header(c: Mapping[str, Any], m: Mapping[str, Any]) -> list[str]:
    return [
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_bytes'] / (1 << 30):.0f} GiB, "
        f"{m['device']}{', ' + m['gpu'] if m.get('gpu') else ''}; torch {m['torch']}; "
        f"checkpoint dir on {m['ckpt_dir_fs']}",
        f"job: {c['nodes']} node(s) x {c['ranks_per_node']} rank(s), "
        f"{c['state_bytes_per_rank'] / (1 << 20):.0f} MiB state per rank, "
        f"{c['params'] / 1e6:.1f}M params; {c['warmup']} warm-up + {c['steps']} measured steps; "
        f"median [min..max] of {c['repeats']} interleaved run(s)",
    ]


def _overhead_row(entry: Mapping[str, Any]) -> str:
    """A contender's training-overhead row (or its failure)."""
    label = entry["label"]
    if entry["status"] != "ok":
        err = entry["errors"][0]["error"].splitlines()[0]
        return f"{label:<20} FAILED: {err[:150]}"
    s = entry["summary"]
    sps = s["steps_per_s"]["median"]
    lost = s.get("work_lost_steps")
    lost_txt = (
        f"{lost['mean']:.1f} mean, {lost['worst']:.1f} worst" if lost else "all (restart at 0)"
    )
    b = s["blocked_s"]
    return (
        f"{label:<20} {sps:7.3f}  {_spread(s['throughput_vs_baseline']):<21} "
        f"{_ms(b['mean'] if b else None):>17} {_ms(b['max'] if b else None):>9} "
        f"{_ms(_med(s, 'safe_s')):>10} {_ms(_med(s, 'durable_s')):>13}  {lost_txt:<20}"
    )


def _second_recovery(s: Mapping[str, Any]) -> str:
    """The recovery column after the trainer kill's: cold cache (disk) or node loss (ecsnap)."""
    if "cold" in s:
        return "cold: " + _sec(s, "cold")
    if "node_loss" in s:
        return "node: " + _sec(s, "node_loss")
    return "not covered" if s["kind"] == "ecsnap" else "-"


def _recovery_row(entry: Mapping[str, Any]) -> str:
    s = entry["summary"]
    return (
        f"{entry['label']:<20} {_sec(s, 'kill'):<36} {_second_recovery(s):<36} "
        f"{_mib(_med(s, 'trainer_max_rss_bytes')):>11} "
        f"{_mib(_med(s, 'smp_vm_hwm_bytes')):>8} {_mib(_med(s, 'smp_arena_bytes')):>10}"
    )


def _target_lines(checks: list[dict[str, Any]]) -> list[str]:
    if not checks:
        return []
    lines = ["", "targets:"]
    for t in checks:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        lines.append(f"  {verdict:<6} {t['target']}: {value} (goal {t['goal']:g}; {t['detail']})")
    return lines


def _failure_lines(contenders: Mapping[str, Any]) -> list[str]:
    failed = [name for name, entry in contenders.items() if entry["status"] != "ok"]
    if not failed:
        return []
    lines = ["", "failed contenders:"]
    for name in failed:
        for err in contenders[name]["errors"]:
            lines.append(f"  {name} (repeat {err['repeat'] + 1}): {err['error'][:2000]}")
    return lines


def render(data: Mapping[str, Any]) -> str:
    contenders = data["contenders"]
    lines = _header(data["config"], data["machine"])
    lines += [
        "",
        f"{'contender':<20} {'steps/s':>7}  {'vs baseline':<21} {'blocked/ckpt mean':>17} "
        f"{'max':>9} {'safe after':>10} {'on disk after':>13}  {'lost/failure (steps)':<20}",
    ]
    lines += [_overhead_row(entry) for entry in contenders.values()]
    lines += [
        "",
        f"{'contender':<20} {'recovery: trainer kill':<36} {'cold cache / node loss':<36} "
        f"{'trainer RSS':>11} {'SMP RSS':>8} {'arena/node':>10}",
    ]
    lines += [_recovery_row(entry) for entry in contenders.values() if entry["status"] == "ok"]
    lines += _LEGEND
    lines += _target_lines(data["targets"])
    lines += _failure_lines(contenders)
    return "\n".join(lines)


# -- plot ---------------------------------------------------------------------------------------
