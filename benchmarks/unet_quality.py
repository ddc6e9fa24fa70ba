"""Segmentation quality of medeff's default 3D U-Net against MONAI's FlexibleUNet(b0) at equal training budget.

medeff's default 3D decoder (widths 128..8) does a third of the FLOPs of FlexibleUNet's (256..16). This script
checks that the lighter decoder segments as well: both networks train on the same phantom organ volumes
(:func:`medeff.demo.phantom.make_phantom_ct`: liver, spleen, kidneys, lung, spine), with the same loss (Dice + CE,
as medeff's segmentation task), optimizer, learning rate, number of steps, batch order and seed, and are scored
by Dice per organ on held-out phantoms, in eval mode after recomputing the batch-norm statistics over the training
volumes (both networks; the Dice with the momentum-averaged statistics left by training is reported too: after a
short run at this learning rate they lag the weights, and FlexibleUNet then predicts background everywhere).
Every seed changes the initialisation and the batch order (the data stay the same); the report gives mean and SD
over seeds, FLOPs per forward and the median time per train step.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/unet_quality.py [--seeds 0 1 2] [--steps 120] [--batch 1] [--threads 1]
        [--shape 64 64 32] [--train-cases 6] [--test-cases 4] [--output benchmarks/results/unet_quality.json]
    python benchmarks/unet_quality.py --preset tiny --output /tmp/q.json     # seconds: checks the script runs

Prints a Markdown table and writes the JSON atomically. Times depend on the machine and its load: the JSON
records the load average and the CPU seconds beside the wall times.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss

from medeff.benchmarks.environment import describe_environment, load_average
from medeff.benchmarks.flops import side_flops
from medeff.benchmarks.peers import build_side
from medeff.demo.phantom import ORGAN_LABELS, make_phantom_ct
from medeff.utils.atomic import write_json_atomic

SIDES = {
    "medeff": {"builder": "medeff", "kwargs": {"name": "efficientnet_b0", "task": "segmentation"}},
    "monai": {"builder": "monai_flexible_unet", "kwargs": {"backbone": "efficientnet-b0"}},
    # medeff's U-Net at FlexibleUNet's decoder widths (not run by default): separates the decoder's share of a gap
    "medeff_wide": {"builder": "medeff", "kwargs": {"name": "efficientnet_b0", "task": "segmentation",
                                                    "decoder_channels": [256, 128, 64, 32, 16]}},
}
DEFAULT_SIDES = ["medeff", "monai"]
PRESETS = {
    "default": {"steps": 120, "shape": [64, 64, 32], "train_cases": 6, "test_cases": 4, "seeds": [0, 1, 2],
                "batch": 1},
    "tiny": {"steps": 2, "shape": [32, 32, 32], "train_cases": 2, "test_cases": 1, "seeds": [0],
             "batch": 2},
}
ORGANS = {name: label for name, label in ORGAN_LABELS.items() if label > 0}
HU_WINDOW = (-1000.0, 500.0)


def make_volumes(n: int, first_seed: int, shape: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` phantoms (seeds ``first_seed...``): images ``(n, 1, *shape)`` in [-1, 1], labels ``(n, 1, *shape)``."""
    images, labels = [], []
    for k in range(n):
        ct, lab = make_phantom_ct(tuple(shape), seed=first_seed + k)
        hu = np.clip(ct.array.astype(np.float32), *HU_WINDOW)
        images.append((hu - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0]) * 2 - 1)
        labels.append(lab.array.astype(np.int64))
    return torch.from_numpy(np.stack(images)[:, None]), torch.from_numpy(np.stack(labels)[:, None])


def dice_per_organ(pred: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Dice of every organ between two label volumes (1.0 when both are empty)."""
    out = {}
    for name, label in ORGANS.items():
        p, r = pred == label, ref == label
        denom = int(p.sum()) + int(r.sum())
        out[name] = 1.0 if denom == 0 else 2.0 * int((p & r).sum()) / denom
    return out


def precise_bn(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Recompute every batch norm's running statistics as the average over the training volumes (one at a time,
    no gradient), then leave the model in eval mode. Short runs at a high learning rate leave momentum-averaged
    statistics far behind the weights; this evaluates both networks with statistics that match their weights."""
    kinds = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    norms = [m for m in model.modules() if isinstance(m, kinds)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), 2):
            model(images[i:i + 2])
    model.eval()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train_and_score(side: dict[str, Any], data: dict[str, torch.Tensor], *, seed: int, steps: int, batch: int,
                    lr: float, log_every: int = 0) -> dict[str, Any]:
    """Train one network from seed ``seed`` and return its Dice per organ on the test volumes and its step times."""
    torch.manual_seed(seed)
    model = build_side(side, 1, len(ORGAN_LABELS), 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    order = torch.Generator().manual_seed(1000 + seed)  # same batches for both networks of a seed
    n = data["train_x"].shape[0]
    times, losses = [], []
    cpu0 = _cpu_s()
    for _ in range(steps):
        idx = torch.randperm(n, generator=order)[:batch]
        x, y = data["train_x"][idx], data["train_y"][idx]
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
        if log_every and len(losses) % log_every == 0:
            print(f"  step {len(losses)}: loss {statistics.fmean(losses[-log_every:]):.3f}, "
                  f"{statistics.median(times[-log_every:]):.2f} s/step", file=sys.stderr, flush=True)
    train_cpu_s = _cpu_s() - cpu0
    model.eval()
    with torch.no_grad():  # as trained: running statistics of the batch norms from the last steps' momentum
        raw = [dice_per_organ(model(x[None]).argmax(1)[0], y[0]) for x, y in zip(data["test_x"], data["test_y"])]
    precise_bn(model, data["train_x"])
    scores, train_scores = [], []
    with torch.no_grad():
        for x, y in zip(data["test_x"], data["test_y"]):
            scores.append(dice_per_organ(model(x[None]).argmax(1)[0], y[0]))
        for x, y in zip(data["train_x"][:2], data["train_y"][:2]):  # fit check: Dice on two training volumes
            train_scores.append(dice_per_organ(model(x[None]).argmax(1)[0], y[0]))
    per_organ = {name: statistics.fmean(s[name] for s in scores) for name in ORGANS}
    train_dice = statistics.fmean(statistics.fmean(s.values()) for s in train_scores)
    return {"dice": per_organ, "mean_dice": statistics.fmean(per_organ.values()), "train_mean_dice": train_dice,
            "mean_dice_momentum_bn": statistics.fmean(statistics.fmean(r.values()) for r in raw),
            "step_median_s": statistics.median(times), "step_times_s": times, "train_wall_s": sum(times),
            "train_cpu_s": train_cpu_s, "loss_first": losses[0], "loss_last": statistics.fmean(losses[-5:])}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and SD (over seeds) of every organ's Dice and of the mean Dice."""
    def stats(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}

    return {"dice": {name: stats([r["dice"][name] for r in runs]) for name in ORGANS},
            "mean_dice": stats([r["mean_dice"] for r in runs]),
            "mean_dice_momentum_bn": stats([r["mean_dice_momentum_bn"] for r in runs]),
            "train_mean_dice": stats([r["train_mean_dice"] for r in runs]),
            "step_median_s": statistics.median(r["step_median_s"] for r in runs)}


def markdown(report: dict[str, Any]) -> str:
    """Dice per organ (mean +- SD over seeds), FLOPs and step time of both networks as a Markdown table."""
    s = report["summary"]
    names = list(report["summary"])
    lines = ["| organ | " + " | ".join(f"{n} Dice (mean +- SD)" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for organ in [*ORGANS, "mean"]:
        cells = [s[n]["mean_dice"] if organ == "mean" else s[n]["dice"][organ] for n in names]
        lines.append(f"| {organ} | " + " | ".join(f"{c['mean']:.3f} +- {c['sd']:.3f}" for c in cells) + " |")
    for key, label in (("train_mean_dice", "mean, 2 training volumes (fit)"),
                       ("mean_dice_momentum_bn", "mean, batch-norm statistics as left by training")):
        lines.append(f"| {label} | " + " | ".join(f"{s[n][key]['mean']:.3f} +- {s[n][key]['sd']:.3f}"
                                                  for n in names) + " |")
    lines.append("| forward GFLOPs | " + " | ".join(f"{report['flops'][n]['forward_flops'] / 1e9:.2f}"
                                                    for n in names) + " |")
    lines.append("| median train step (s) | " + " | ".join(f"{s[n]['step_median_s']:.2f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="phantom volume (i j k), multiples of 32")
    parser.add_argument("--train-cases", type=int, default=None)
    parser.add_argument("--test-cases", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=20, help="print the mean loss every N steps (0: never)")
    parser.add_argument("--sides", nargs="+", choices=sorted(SIDES), default=DEFAULT_SIDES,
                        help="networks to train (default: medeff and monai)")
    parser.add_argument("--output", default="benchmarks/results/unet_quality.json")
    args = parser.parse_args(argv)
    preset = dict(PRESETS[args.preset])
    for key in ("seeds", "steps", "shape", "train_cases", "test_cases", "batch"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    torch.set_num_threads(args.threads)
    shape = [int(v) for v in preset["shape"]]
    train_x, train_y = make_volumes(preset["train_cases"], 100, shape)
    test_x, test_y = make_volumes(preset["test_cases"], 200, shape)
    data = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    spec = {"batch": preset["batch"], "channels": 1, "size": shape, "classes": len(ORGAN_LABELS)}
    report: dict[str, Any] = {
        "environment": describe_environment(args.threads, {}),
        "settings": {**preset, "batch": preset["batch"], "lr": args.lr, "optimizer": "AdamW(weight_decay=1e-4)",
                     "loss": "DiceCE(include_background=False)", "organs": ORGANS, "sides": SIDES,
                     "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS")},
        "flops": {n: side_flops(SIDES[n], spec) for n in args.sides},
        "runs": {n: [] for n in args.sides}, "load_average_per_run": [],
    }
    wall0, cpu0 = time.perf_counter(), _cpu_s()
    for seed in preset["seeds"]:
        for name in (args.sides if seed % 2 == 0 else args.sides[::-1]):  # alternate which network trains first
            run = train_and_score(SIDES[name], data, seed=seed, steps=preset["steps"], batch=preset["batch"],
                                  lr=args.lr, log_every=args.log_every)
            run["seed"] = seed
            report["runs"][name].append(run)
            report["load_average_per_run"].append({"side": name, "seed": seed, "load_average": load_average()})
            print(f"seed {seed} {name}: mean Dice {run['mean_dice']:.3f} (train {run['train_mean_dice']:.3f}), "
                  f"step {run['step_median_s']:.2f} s, "
                  f"loss {run['loss_first']:.3f} -> {run['loss_last']:.3f}", file=sys.stderr, flush=True)
    report["summary"] = {n: summarise(runs) for n, runs in report["runs"].items()}
    report["wall_s"], report["cpu_s"] = time.perf_counter() - wall0, _cpu_s() - cpu0
    report["environment"]["load_average_end"] = load_average()
    report["markdown"] = markdown(report)
    write_json_atomic(Path(args.output), report, overwrite=True)
    print(report["markdown"])
    print(f"wrote {args.output} ({report['wall_s']:.0f} s wall, {report['cpu_s']:.0f} CPU s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
