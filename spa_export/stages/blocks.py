"""What block masks (SPLoPA) became: block density against real channel removal.

A block mask prunes weight blocks, which cost as much as any other weights
in a dense runtime. Only a whole row of pruned blocks (output channels that
read nothing) or a whole column (input channels no block reads) can become
channel removal, through the same dependency groups as channel masks. This
report says, per layer, how dense its blocks are and how many of its
channels the build removed.
"""

from __future__ import annotations

from spa_export.spa import SpaFile
from spa_export.stages.plan.model import PrunePlan


def block_report(spa: SpaFile, plan: PrunePlan) -> list[dict]:
    """One entry per layer with a ``block_mask``."""
    rows = []
    for name, layer in sorted(spa.layers.items()):
        mask = layer.block_mask
        if mask is None:
            continue
        grid_rows, grid_cols = (int(s) for s in mask.shape)
        mp = plan.modules.get(name)
        out_size = mp.out_size if mp is not None and mp.out_size else None
        in_size = mp.in_size if mp is not None and mp.in_size else None

        def removed(keep: list[int] | None, size: int | None) -> int:
            return 0 if keep is None or size is None else size - len(keep)

        kept = int(mask.sum())
        rows.append({
            "layer": name,
            "grid": [grid_rows, grid_cols],
            "blocks_kept": kept,
            "density": kept / max(mask.numel(), 1),
            "block_rows_pruned": int((~mask.any(1)).sum()),
            "block_cols_pruned": int((~mask.any(0)).sum()),
            "out_removed": removed(mp.out_keep if mp else None, out_size),
            "in_removed": removed(mp.in_keep if mp else None, in_size),
        })
    return rows

