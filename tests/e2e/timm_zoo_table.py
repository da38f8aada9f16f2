"""ZOO_RESULTS.md's timm table from a ``SPA_ZOO_RECORD`` file of ``test_timm_zoo.py``.

    SPA_ZOO_RECORD=/tmp/timm.jsonl python -m pytest tests/e2e/test_timm_zoo.py -m slow -q
    python tests/e2e/timm_zoo_table.py /tmp/timm.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def _short(reason: str, n: int = 110) -> str:
    reason = reason.replace("|", "/").replace("\n", " ")
    return reason if len(reason) <= n else reason[: n - 3] + "..."


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
        if g and g.get("minimum"):
            ratio = g["pruned"] / g["minimum"]
            measured += 1
            within += ratio <= 1.1
            gtext = f"{g['pruned'] / g['dense']:.0%} / {g['minimum'] / g['dense']:.0%} (x{ratio:.2f})"
        elif g:
            gtext = f"{g['pruned'] / g['dense']:.0%} / none ({_short(g.get('no_minimum') or '', 60)})"
        else:
            gtext = "-"
        kept = {m: (f"{modes[m]['pruned'] / modes[m]['dense']:.0%}" if m in modes else "-") for m in ("out-only", "random")}
        why = _short(g["reason"]) if g and g.get("minimum") and g["pruned"] > 1.1 * g["minimum"] else ""
        lines.append(f"| {family} | {first['model']} | {first['input']} | {first['dense'] / 1e6:.2f} M | {gtext} | "
                     f"{kept['out-only']} | {kept['random']} | {why} |")
    lines.append("")
    lines.append(f"{within} of {measured} families with a Torch-Pruning minimum keep at most 1.1x of it.")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    print(table(rows))
