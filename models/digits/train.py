"""Train the shipped example: a digits base network and three task SPAs, with the real sp_adapters library.

    python models/digits/train.py          # about a minute on 2 CPU cores; rewrites models/digits/

The data is scikit-learn's bundled digits (1,797 images of 8x8 pixels, no
download), split once, stratified, into 70% for training and 30% held out.

* **Base**: ``spa_export.examples:digits_cnn``, trained on digits 0-4 only.
* **Tasks** (the paper's task switching: one frozen base, a small SPA each):

  ========== ============================================ ======= =======
  task       what it learns                               adapter pruned
  ========== ============================================ ======= =======
  new-digits digits 5-9, classes the base never saw        SPLoRA  50%
  rotated    digits 0-4 rotated by 90 degrees              SPPaRA  30%
  parity     odd or even, all ten digits (coarser labels)  SPLoRA  70%
  ========== ============================================ ======= =======

Each task adapts the frozen base with ``sp_adapters`` (it also learns
batch-norm's scale and shift, with the statistics frozen, and a new head
where the classes differ), trains, then prunes output
channels the way the paper's channel experiments do: per convolution, the
channels with the smallest adapted-weight L1 norm are masked, the network is
fine-tuned with the masks, and the masks are baked in with
``torch.nn.utils.prune`` (``spa_export.examples.prune_output_channels``).
The adapted network's state dict then goes through ``spa-export pack``, which
writes ``<task>.spa``. Held-out splits are saved as ``<task>-test.npz``.

For comparison, each task is also trained as plain fine-tuning (every weight,
no pruning), and the base alone is measured (as it is where the classes are
the base's, else with only a new head trained on frozen features). Results
go to ``training.json`` and ``TRAINING.md``.

Deterministic: seeded, one thread, deterministic algorithms.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent
ARCH = "spa_export.examples:digits_cnn"
SEED = 0
EPOCHS = (30, 10)          # adapter training, then fine-tuning after each pruning step
PRUNE_STEPS = (0.5, 0.8, 1.0)   # the target fraction reached gradually
BATCH = 64


@dataclass(frozen=True)
class Task:
    name: str
    what: str
    adapter: str                          # splora | sppara
    prune: float                          # fraction of each convolution's output channels masked
    labels: Callable[[np.ndarray], np.ndarray]
    select: Callable[[np.ndarray], np.ndarray]
    transform: Callable[[np.ndarray], np.ndarray] | None = None
    new_head: bool = True
    rank: int = 4                         # SPLoRA's rank


TASKS = [
    Task("new-digits", "digits 5-9, which the base never saw", "splora", 0.5,
         labels=lambda y: y - 5, select=lambda y: y >= 5),
    Task("rotated", "digits 0-4 rotated by 90 degrees", "sppara", 0.3,
         labels=lambda y: y, select=lambda y: y < 5, transform=lambda x: np.rot90(x, 1, axes=(2, 3)).copy(),
         new_head=False),
    Task("parity", "odd or even, all ten digits", "splora", 0.7,
         labels=lambda y: y % 2, select=lambda y: y >= 0, rank=8),
]


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and held-out splits: images [N, 1, 8, 8] in [0, 1] (float32) and labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(x, data.target, test_size=0.3, stratify=data.target, random_state=SEED)


def _batches(n: int, seed: int):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for i in range(0, n, BATCH):
        yield order[i:i + BATCH]


def train(model: nn.Module, params: list[nn.Parameter], x: np.ndarray, y: np.ndarray, epochs: int,
          lr: float, seed: int, *, bn_train: bool = False,
          after_step: Callable[[], None] | None = None) -> None:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    opt = torch.optim.Adam(params, lr=lr)
    for epoch in range(epochs):
        model.train(bn_train)   # frozen batch-norm statistics unless the base itself is trained
        for idx in _batches(len(xt), seed * 1000 + epoch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
            if after_step is not None:
                after_step()
    model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model.eval()(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def masks_by_importance(model: nn.Module, fraction: float,
                        hooks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per convolution, keep the output channels with the largest adapted-weight L1 norm.

    Channels already masked (``hooks``) stay masked: their norm counts as zero.
    """
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            with torch.no_grad():
                norms = mod.adapted_weight.abs().flatten(1).sum(1)
                if hooks is not None:
                    norms = norms * hooks[name]
            kept = max(1, round(len(norms) * (1 - fraction)))
            keep = torch.zeros(len(norms), dtype=torch.bool)
            keep[torch.argsort(norms, descending=True, stable=True)[:kept]] = True
            out[name] = keep
    return out


def adapt(task: Task, base: nn.Module, classes: int) -> nn.Module:
    import sp_adapters

    model = copy.deepcopy(base)
    if task.adapter == "splora":
        model = sp_adapters.SPLoRA(model, rank=task.rank, init_range=1e-3)
    else:
        model = sp_adapters.SPPaRA(model, init_range=1e-3)
    if task.new_head:
        model.fc = nn.Linear(model.fc.in_features, classes)
    return model


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """What a task learns: adapters, biases, the head, and batch-norm's scale and shift (not its statistics)."""
    return [p for p in model.parameters() if p.requires_grad]


def task_data(task: Task, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = task.select(y)
    xs = x[keep]
    return (task.transform(xs) if task.transform else xs).astype(np.float32), task.labels(y[keep]).astype(np.int64)


def run_task(task: Task, base: nn.Module, split: tuple, work: Path, base_path: Path) -> dict:
    from spa_export.examples import digits_cnn, prune_output_channels

    xtr, ytr = task_data(task, split[0], split[2])
    xte, yte = task_data(task, split[1], split[3])
    classes = int(ytr.max()) + 1
    torch.manual_seed(SEED)
    model = adapt(task, base, classes)
    train(model, trainable(model), xtr, ytr, EPOCHS[0], 1e-2, seed=1)
    modules = dict(model.named_modules())
    hooks: list = []
    keep: dict[str, torch.Tensor] | None = None
    for step, fraction in enumerate(PRUNE_STEPS, 1):   # prune gradually, fine-tuning with the masks
        for h in hooks:
            h.remove()
        keep = masks_by_importance(model, task.prune * fraction, hooks=keep)
        hooks = [modules[n].register_forward_hook(lambda _m, _a, out, k=k: out * k.float().view(1, -1, 1, 1))
                 for n, k in keep.items()]
        train(model, trainable(model), xtr, ytr, EPOCHS[1], 5e-3, seed=1 + step)
    for h in hooks:
        h.remove()
    for name, k in (keep or {}).items():
        prune_output_channels(modules[name], k)
    spa_accuracy = accuracy(model, xte, yte)

    # pack: the adapted network's state dict -> the task's SPA file, as a user runs it
    adapted = work / f"{task.name}.adapted.pt"
    torch.save(model.state_dict(), adapted)
    done = subprocess.run([sys.executable, "-m", "spa_export", "pack", "--arch", ARCH, "--base", str(base_path),
                           "--adapted", str(adapted), "--input-shape", "1,1,8,8", "--task", task.name,
                           "-o", str(HERE / f"{task.name}.spa"), "--json", str(work / f"{task.name}.json"),
                           "--force"], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"pack failed for {task.name}:\n{done.stderr}")
    print(done.stdout, end="")
    packed = json.loads((work / f"{task.name}.json").read_text())
    np.savez_compressed(HERE / f"{task.name}-test.npz", x=xte, y=yte, dataset=np.array(f"sklearn-digits:{task.name}"),
                        split=np.array("held-out 30%"))

    # comparisons: the base alone, plain fine-tuning
    torch.manual_seed(SEED)
    if task.new_head:
        probe = copy.deepcopy(base)
        probe.fc = nn.Linear(probe.fc.in_features, classes)
        train(probe, list(probe.fc.parameters()), xtr, ytr, EPOCHS[0] + EPOCHS[1] * len(PRUNE_STEPS), 1e-2, seed=3)
        base_alone, base_how = accuracy(probe, xte, yte), "frozen base, new head trained"
    else:
        base_alone, base_how = accuracy(base, xte, yte), "the base as it is"
    torch.manual_seed(SEED)
    tuned = digits_cnn(classes) if task.new_head else copy.deepcopy(base)
    if task.new_head:
        tuned.load_state_dict({k: v for k, v in base.state_dict().items() if not k.startswith("fc.")}, strict=False)
    train(tuned, list(tuned.parameters()), xtr, ytr, EPOCHS[0] + EPOCHS[1] * len(PRUNE_STEPS), 3e-3, seed=4)
    return {"task": task.name, "what": task.what, "adapter": task.adapter, "rank": task.rank, "pruned": task.prune,
            "classes": classes, "train": len(ytr), "test": len(yte),
            "accuracy": {"spa": spa_accuracy, "base_alone": base_alone, "base_alone_how": base_how,
                         "fine_tuning": accuracy(tuned, xte, yte)},
            "learned_params": {"spa": packed["learned_params"]["total"],
                               "fine_tuning": sum(p.numel() for p in tuned.parameters())},
            "spa_bytes": packed["spa_bytes"], "check": packed["check"]}


def main() -> None:
    from spa_export.examples import digits_cnn

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    split = digits()
    xtr, xte, ytr, yte = split
    torch.manual_seed(SEED)
    base = digits_cnn(5)
    seen = ytr < 5
    train(base, list(base.parameters()), xtr[seen], ytr[seen], 40, 3e-3, seed=0, bn_train=True)
    base_path = HERE / "base.safetensors"
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(base_path))
    results = {"base": {"arch": ARCH, "trained_on": "digits 0-4", "train": int(seen.sum()),
                        "test_accuracy": accuracy(base, xte[yte < 5], yte[yte < 5]),
                        "bytes": base_path.stat().st_size}, "tasks": []}
    with tempfile.TemporaryDirectory() as tmp:
        for task in TASKS:
            results["tasks"].append(run_task(task, base, split, Path(tmp), base_path))
    (HERE / "training.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "TRAINING.md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    b = results["base"]
    lines = ["# The shipped example: how it was trained", "",
             f"Made by `python models/digits/train.py` (see its docstring). Base: `{b['arch']}` trained on "
             f"{b['trained_on']} ({b['train']} images), held-out accuracy {b['test_accuracy']:.1%}; "
             f"{b['bytes']:,} bytes.", "",
             "Held-out accuracy (30% of scikit-learn's digits, never trained on):", "",
             "| Task | What it learns | SPA | Channels pruned | SPA accuracy | Base alone | Plain fine-tuning | "
             "SPA bytes (% of base) | Learned params: SPA / fine-tuning |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for t in results["tasks"]:
        a = t["accuracy"]
        kind = f"SPLoRA rank {t['rank']}" if t["adapter"] == "splora" else "SPPaRA"
        lines.append(f"| {t['task']} | {t['what']} | {kind} | {t['pruned']:.0%} | {a['spa']:.1%} | "
                     f"{a['base_alone']:.1%} ({a['base_alone_how']}) | {a['fine_tuning']:.1%} | "
                     f"{t['spa_bytes']:,} ({t['spa_bytes'] / b['bytes']:.1%}) | "
                     f"{t['learned_params']['spa']:,} / {t['learned_params']['fine_tuning']:,} |")
    lines += ["", "Every SPA file was written by `spa-export pack` from the adapted network's state dict and "
              "checked against that network's own forward pass.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
