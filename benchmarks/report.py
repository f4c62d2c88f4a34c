"""Presenting results: the terminal table, the headline ratios, JSON and the PNG chart."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

OURS = "ours-async"
PG = "postgresql"
SQLITE = "sqlite"
MYSQL = "mysql"

_COLUMNS = (
    ("backend", "{:<10}"),
    ("op", "{:<7}"),
    ("c", "{:>5}"),
    ("subject", "{:<15}"),
    ("mode", "{:<7}"),
    ("ops", "{:>6}"),
    ("ops/s", "{:>9}"),
    ("p50 ms", "{:>8}"),
    ("p99 ms", "{:>8}"),
    ("lag p99", "{:>8}"),
    ("conn", "{:>5}"),
    ("err", "{:>5}"),
    ("wrong", "{:>5}"),
)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def run_row(run: dict[str, Any]) -> str:
    """One run as a table line."""
    cells = (
        run["backend"],
        run["op"],
        run["concurrency"],
        run["subject"],
        run["mode"],
        run["ops"],
        _fmt(run["ops_per_s"], 0),
        _fmt(run["p50_ms"]),
        _fmt(run["p99_ms"]),
        _fmt(run["loop_lag_p99_ms"]),
        run["new_connections"],
        run["errors"],
        run["wrong"],
    )
    return "  ".join(fmt.format(cell) for (_, fmt), cell in zip(_COLUMNS, cells, strict=True))


def header() -> str:
    """The table's header line."""
    titles = "  ".join(fmt.replace(",", "").format(title) for title, fmt in _COLUMNS)
    return titles + "\n" + "-" * len(titles)


def print_runs(runs: list[dict[str, Any]], out: TextIO) -> None:
    """All runs, grouped by (backend, op, concurrency) so subjects sit side by side."""
    order = {name: i for i, name in enumerate(dict.fromkeys(r["subject"] for r in runs))}
    ops_order = {name: i for i, name in enumerate(dict.fromkeys(r["op"] for r in runs))}
    ranked = sorted(
        runs,
        key=lambda r: (r["backend"], ops_order[r["op"]], r["concurrency"], order[r["subject"]]),
    )
    print(header(), file=out)
    previous: tuple[str, str, int] | None = None
    for run in ranked:
        group = (run["backend"], run["op"], run["concurrency"])
        if previous is not None and group != previous:
            print(file=out)
        previous = group
        print(run_row(run), file=out)


def print_memory(memory: list[dict[str, Any]], out: TextIO) -> None:
    """Peak memory of the hits run at the highest concurrency, per subject."""
    print("\nPeak Python memory (tracemalloc peak above start), hits run:", file=out)
    for entry in memory:
        print(
            f"  {entry['backend']:<10} {entry['subject']:<15} c={entry['concurrency']:<5} "
            f"{entry['tracemalloc_peak_mib']:8.1f} MiB  ({entry['ops']} ops)",
            file=out,
        )


def print_table_size(size: dict[str, Any] | None, out: TextIO) -> None:
    """Lookup latency on the small and big PostgreSQL tables."""
    if not size:
        return
    tables = size["tables"]
    print("\nLookup latency by table size (PostgreSQL, one lookup at a time):", file=out)
    for kind in ("ours_alookup", "asyncpg_select"):
        figures = size[kind]
        line = "  ".join(
            f"{tables[label]['rows']:>9,} rows: p50 {figures[label]['p50_ms']:.3f} ms "
            f"p99 {figures[label]['p99_ms']:.3f} ms"
            for label in ("small", "big")
        )
        print(f"  {kind:<15} {line}  ratio p50 {figures['ratio_p50']:.2f}", file=out)


def _find(
    runs: Iterable[dict[str, Any]], backend: str, subject: str, op: str, concurrency: int
) -> dict[str, Any] | None:
    for run in runs:
        if (run["backend"], run["subject"], run["op"], run["concurrency"]) == (
            backend,
            subject,
            op,
            concurrency,
        ):
            return run
    return None


# (label, backend, op, concurrency, numerator subject, denominator subject, field)
_TARGETS: tuple[tuple[str, str, str, int, str, str, str], ...] = (
    ("PG hits c=100 throughput, ours/community", PG, "hits", 100, OURS, "community", "ops_per_s"),
    ("PG hits c=100 throughput, ours/asyncpg-floor", PG, "hits", 100, OURS, "asyncpg-floor",
     "ops_per_s"),
    ("PG updates c=100 throughput, ours/community", PG, "updates", 100, OURS, "community",
     "ops_per_s"),
    ("PG hits c=1 p50 latency, ours/asyncpg-floor", PG, "hits", 1, OURS, "asyncpg-floor",
     "p50_ms"),
    ("SQLite hits c=100 throughput, ours/community", SQLITE, "hits", 100, OURS, "community",
     "ops_per_s"),
    ("MariaDB hits c=100 throughput, asyncmy/aiomysql", MYSQL, "hits", 100, OURS,
     "ours-aiomysql", "ops_per_s"),
    ("MariaDB updates c=100 throughput, asyncmy/aiomysql", MYSQL, "updates", 100, OURS,
     "ours-aiomysql", "ops_per_s"),
    ("MariaDB hits c=1 p50 latency, asyncmy/aiomysql", MYSQL, "hits", 1, OURS,
     "ours-aiomysql", "p50_ms"),
    ("MariaDB hits c=100 throughput, ours async/sync threads", MYSQL, "hits", 100, OURS,
     "ours-sync", "ops_per_s"),
)  # fmt: skip


def _ratio(
    runs: list[dict[str, Any]], target: tuple[str, str, str, int, str, str, str]
) -> dict[str, Any]:
    label, backend, op, concurrency, a, b, field = target
    first = _find(runs, backend, a, op, concurrency)
    second = _find(runs, backend, b, op, concurrency)
    value = None
    if first and second and first["ops"] and second["ops"] and second[field]:
        value = first[field] / second[field]
    return {"target": label, "value": value, "unit": "x", "field": field}


def compute_ratios(
    runs: list[dict[str, Any]], table_size: dict[str, Any] | None, variants: list[str]
) -> list[dict[str, Any]]:
    """The headline figures the issue asks for (None where the run did not include them)."""
    targets = list(_TARGETS)
    for variant in variants:
        if variant != OURS:
            label = f"PG hits c=100 throughput, {variant}/ours"
            targets.append((label, PG, "hits", 100, variant, OURS, "ops_per_s"))
    ratios = [_ratio(runs, target) for target in targets]
    for backend, short in ((PG, "PG"), (SQLITE, "SQLite"), (MYSQL, "MariaDB")):
        hits = [r for r in runs if (r["backend"], r["subject"], r["op"]) == (backend, OURS, "hits")]
        if hits:
            top = max(hits, key=lambda r: r["concurrency"])
            ratios.append(
                {
                    "target": f"{short} event loop lag p99 at c={top['concurrency']} hits, ours",
                    "value": top["loop_lag_p99_ms"],
                    "unit": "ms",
                    "field": "loop_lag_p99_ms",
                }
            )
    if table_size:
        rows = {label: table_size["tables"][label]["rows"] for label in ("small", "big")}
        for kind in ("ours_alookup", "asyncpg_select"):
            for field in ("ratio_p50", "ratio_p99"):
                ratios.append(
                    {
                        "target": f"PG lookup latency {rows['big']:,}/{rows['small']:,} rows, "
                        f"{kind} {field[-3:]}",
                        "value": table_size[kind][field],
                        "unit": "x",
                        "field": field,
                    }
                )
    return ratios


def print_ratios(ratios: list[dict[str, Any]], out: TextIO) -> None:
    """The headline figures, one a line."""
    print("\nHeadline ratios:", file=out)
    for ratio in ratios:
        value = ratio["value"]
        shown = "n/a (not in this run)" if value is None else f"{value:.2f} {ratio['unit']}"
        print(f"  {ratio['target']:<58} {shown}", file=out)


def write_json(results: dict[str, Any], path: Path) -> None:
    """Write everything to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def write_chart(runs: list[dict[str, Any]], path: Path) -> None:
    """Throughput against concurrency: one panel per backend x operation, log x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(dict.fromkeys(r["backend"] for r in runs))
    ops = list(dict.fromkeys(r["op"] for r in runs))
    subjects = list(dict.fromkeys(r["subject"] for r in runs))
    colors = {name: f"C{i}" for i, name in enumerate(subjects)}
    fig, axes = plt.subplots(
        len(backends),
        len(ops),
        figsize=(4.2 * len(ops), 3.4 * len(backends)),
        squeeze=False,
    )
    for row, backend in enumerate(backends):
        for col, op in enumerate(ops):
            ax = axes[row][col]
            for subject in subjects:
                points = sorted(
                    (r["concurrency"], r["ops_per_s"])
                    for r in runs
                    if (r["backend"], r["op"], r["subject"]) == (backend, op, subject) and r["ops"]
                )
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, marker="o", label=subject, color=colors[subject])
            ax.set_xscale("log")
            ax.set_ylim(bottom=0)
            ax.set_title(f"{backend}: {op}")
            ax.set_xlabel("concurrency")
            ax.set_ylabel("ops/s")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_processes(processes: dict[str, Any] | None, out: TextIO) -> None:
    """Aggregate throughput per process count, and the scaling against one process."""
    if not processes or not processes["runs"]:
        return
    print("\nMany processes (mixed workload, aggregate):", file=out)
    single = {r["backend"]: r["ops_per_s"] for r in processes["runs"] if r["processes"] == 1}
    for run in processes["runs"]:
        base = single.get(run["backend"])
        scale = f"{run['ops_per_s'] / base:.2f}x of 1 process" if base else ""
        print(
            f"  {run['backend']:<11} {run['processes']} x {run['concurrency_per_process']} tasks"
            f"  {run['ops_per_s']:>9,.0f} ops/s  {scale}  errors {run['errors']}"
            f"  unexpected misses {run['unexpected_misses']}",
            file=out,
        )
