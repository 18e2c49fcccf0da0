"""`python -m benchmarks.report [results.json]`: the results of a run as Markdown tables
(what docs/benchmarks.md shows). Default: benchmarks/results/latest.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List

from .run import LABEL, RESULTS, SYSTEMS, cell, fmt, ratio


def figures_md(data: Dict[str, Any]) -> List[str]:
    out = ["| figure | unit | minique | Celery | minique/Celery |", "|---|---|---:|---:|---:|"]
    for name, fig in data["figures"].items():
        if not fig["rows"] or fig.get("systems"):   # (a figure with its own columns: its own table)
            continue
        out.append(f"| **{fig['title']}** (`{name}`) | | | | |")
        for row in fig["rows"]:
            cells = [cell(row["values"].get(s, []), row["unit"]) for s in SYSTEMS]
            r = ratio(row)
            label = row["label"].strip()
            if row["label"].startswith("  "):
                label = "&nbsp;&nbsp;" + label
            out.append(f"| {label} | {row['unit']} | {cells[0]} | {cells[1]} | {f'{r:.2f}x' if r else '-'} |")
    return out if len(out) > 2 else []


def own_columns_md(data: Dict[str, Any]) -> List[str]:
    """The figures with their own systems (asyncio_io: minique, arq, taskiq), a table each."""
    out: List[str] = []
    for name, fig in data["figures"].items():
        systems = fig.get("systems")
        if not fig["rows"] or not systems:
            continue
        out.append(f"**{fig['title']}** (`{name}`)\n")
        out.append("| figure | unit | " + " | ".join(LABEL[s] for s in systems) + " |")
        out.append("|---|---|" + "---:|" * len(systems))
        for row in fig["rows"]:
            label = row["label"].strip()
            if row["label"].startswith("  "):
                label = "&nbsp;&nbsp;" + label
            out.append(f"| {label} | {row['unit']} | "
                       + " | ".join(cell(row["values"].get(s, []), row["unit"]) for s in systems) + " |")
        out.append("")
        out.extend(f"* {note}" for note in fig.get("notes", []))
        out.append("")
    return out


def goals_md(data: Dict[str, Any]) -> List[str]:
    out = ["| goal | target | minique (median) | |", "|---|---|---:|---|"]
    for g in data["goals"]:
        state = "n/a" if g["met"] is None else ("met" if g["met"] else "**not met**")
        v = g["value"]
        value = "-" if v is None else (f"{v:.2f}" if g["unit"] in ("ms", "ratio", "s", "%", "MiB") else f"{v:,.0f}")
        out.append(f"| {g['goal']} | {g['target']} {g['unit']} | {value} {g['unit']} | {state} |")
    return out


def commands_md(data: Dict[str, Any]) -> List[str]:
    out: List[str] = []
    for table in data["figures"].get("commands", {}).get("tables", []):
        out.append(f"**{table['title']}** ({table['side']}), per task:\n")
        out.append("| command | minique | Celery |")
        out.append("|---|---:|---:|")
        names = sorted({k for d in table["per_task"].values() for k in d})
        for name in names:
            vals = [table["per_task"].get(s, {}).get(name) for s in SYSTEMS]
            if all(v is None or v < 0.0005 for v in vals):
                continue
            out.append(f"| {name} | " + " | ".join(fmt(v, "per task") if v else "-" for v in vals) + " |")
        tot = [sum(table["per_task"][s].values()) if s in table["per_task"] else None for s in SYSTEMS]
        out.append("| **commands** | " + " | ".join(fmt(v, "per task") if v is not None else "-" for v in tot) + " |")
        rts = [table["roundtrips"].get(s) for s in SYSTEMS]
        if any(rts):
            out.append("| **network round trips** | " + " | ".join(
                (fmt(sum(r.values()), "per task") + " (" + ", ".join(f"{k} {v:.2f}" for k, v in r.items() if v) + ")")
                if r else "-" for r in rts) + " |")
        out.append("")
    return out


def main(argv: List[str]) -> int:
    path = Path(argv[0]) if argv else RESULTS / "latest.json"
    data = json.loads(path.read_text())
    m = data["info"]["machine"]
    print(f"Run of {data['when']}: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory']}, Python {m['python']}, "
          f"redis-py {m.get('redis_py', '?')} ({m.get('parser', '?')} parser), redis-server {data['info']['redis']}, "
          f"minique {data['info'].get('minique', {}).get('version', '-')}, "
          f"Celery {data['info'].get('celery', {}).get('version', '-')}, "
          f"arq {data['info'].get('arq', {}).get('version', '-')}, "
          f"taskiq {data['info'].get('taskiq', {}).get('version', '-')}; {data['params']['runs']} runs, "
          f"{data['seconds']:.0f} s; load average {m['loadavg_start'][0]:.2f} at the start, "
          f"{m.get('loadavg_end', [float('nan')])[0]:.2f} at the end.\n")
    print("\n".join(figures_md(data)))
    print()
    print("\n".join(own_columns_md(data)))
    print("\n".join(goals_md(data)))
    print()
    print("\n".join(commands_md(data)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
