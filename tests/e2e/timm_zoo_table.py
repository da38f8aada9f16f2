"""ZOO_RESULTS.md's timm table from a ``SPA_ZOO_RECORD`` file of ``test_timm_zoo.py``.

    SPA_ZOO_RECORD=/tmp/timm.jsonl python -m pytest tests/e2e/test_timm_zoo.py -m slow -q
    python tests/e2e/timm_zoo_table.py /tmp/timm.jsonl

A family's group masks are judged against the spec's minimum (Torch-Pruning's removal of the same
channels, less the groups a layer norm reads); where Torch-Pruning cannot prune the network, against
the masks' count of convolution and linear weights (``mask_minimum``).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

LIMIT = 1.1


def _short(reason: str, n: int = 110) -> str:
    reason = reason.replace("|", "/").replace("\n", " ")
    return reason if len(reason) <= n else reason[: n - 3] + "..."


def ratio(row: dict) -> float | None:
    """Kept over the yardstick's minimum for a ``groups`` row; None where there is no yardstick."""
    if row.get("spec_minimum"):
        return row["pruned"] / row["spec_minimum"]
    if row.get("minimum"):            # records from before spec_minimum
        return row["pruned"] / row["minimum"]
    if row.get("mask_minimum"):
        return row["pruned_layers"] / row["mask_minimum"]
    return None


def _groups_cell(g: dict) -> str:
    r = ratio(g)
    if r is None:
        return f"{g['pruned'] / g['dense']:.0%} / none ({_short(g.get('no_minimum') or '', 60)})"
    if g.get("spec_minimum"):
        tp = f", TP {g['minimum'] / g['dense']:.0%}" if g["minimum"] != g["spec_minimum"] else ""
        return f"{g['pruned'] / g['dense']:.0%} / {g['spec_minimum'] / g['dense']:.0%}{tp} (x{r:.2f})"
    if g.get("minimum"):
        return f"{g['pruned'] / g['dense']:.0%} / {g['minimum'] / g['dense']:.0%} (x{r:.2f})"
    return f"{g['pruned'] / g['dense']:.0%}; conv+linear {g['pruned_layers']:,} / {g['mask_minimum']:,} masks' count (x{r:.2f})"


def table(rows: list[dict]) -> str:
    by = defaultdict(dict)
    for r in rows:
        by[r["family"]][r["masks"].split(" ")[0]] = r
    lines = ["| family | model | input | params | groups: kept / minimum | out-only kept | random kept | what stays (groups) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    within = measured = 0
    for family in sorted(by):
        modes = by[family]
        g = modes.get("groups")
        first = next(iter(modes.values()))
        r = ratio(g) if g else None
        if r is not None:
            measured += 1
            within += r <= LIMIT
        kept = {m: (f"{modes[m]['pruned'] / modes[m]['dense']:.0%}" if m in modes else "-") for m in ("out-only", "random")}
        why = _short(g["reason"]) if r is not None and r > LIMIT else ""
        lines.append(f"| {family} | {first['model']} | {first['input']} | {first['dense'] / 1e6:.2f} M | "
                     f"{_groups_cell(g) if g else '-'} | {kept['out-only']} | {kept['random']} | {why} |")
    lines.append("")
    lines.append(f"{within} of {measured} families with a minimum keep at most {LIMIT}x of it.")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    print(table(rows))
