"""Write ``<task>-calib.npz``: int8 calibration inputs for each demo task (inputs only).

128 samples per task from the training split that ``train.py`` makes (never the held-out
30%), with the task's own transform, in the order the split gives them: what a user would hand
``--calibration``. Deterministic; needs scikit-learn (its bundled digits) and the training
script's definitions.

    python models/digits/calibration.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train import TASKS, digits, task_data  # noqa: E402

SAMPLES = 128


def main() -> None:
    xtr, _, ytr, _ = digits()
    for task in TASKS:
        x, _ = task_data(task, xtr, ytr)
        np.savez_compressed(HERE / f"{task.name}-calib.npz", x=x[:SAMPLES],
                            source=np.array(f"sklearn-digits:{task.name}, training split, first {SAMPLES}"))
        print(f"wrote {task.name}-calib.npz: {min(SAMPLES, len(x))} samples")


if __name__ == "__main__":
    main()
