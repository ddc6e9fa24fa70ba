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

``--data organs`` runs the same comparison on the organ pipeline's real CT (``pipelines/organ_segmentation.sh``,
``../shared/data/ct_organs_totalsegmentator``, or ``$MEDEFF_SHARED_DATA``): its 7 organs, 3 mm voxels, HU window
[-160, 240]; training on patches of ``example_ct`` (each step one patch centred on an organ voxel and one anywhere,
the recipe's sampling), scoring by sliding-window inference on the held-out DICOM series ``example_ct_dicom``
(another patient, scanner and phase) against its label map, for the organs present there; the Dice over the whole
training volume is the fit check. The label maps are TotalSegmentator outputs, not manual ground truth.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/unet_quality.py [--seeds 0 1 2] [--steps 120] [--batch 1] [--threads 1]
        [--shape 64 64 32] [--train-cases 6] [--test-cases 4] [--output benchmarks/results/unet_quality.json]
    python benchmarks/unet_quality.py --preset tiny --output /tmp/q.json     # seconds: checks the script runs
    OMP_NUM_THREADS=1 python benchmarks/unet_quality.py --data organs [--steps 600] [--sides medeff]

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
from medeff.engine.inference import sliding_window
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
#: the organ pipeline's data (pipelines/organ_segmentation.conf): files under the shared data folder, label map
#: (TotalSegmentator ids -> 1..7) and preprocessing (data.preprocessing of its training run)
REAL = {
    "folder": "ct_organs_totalsegmentator",
    "train": ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz"),
    "test": ("example_ct_dicom", "example_seg_dicom.nii.gz"),
    "label_remap": {1: 1, 2: 2, 3: 3, 5: 4, 6: 5, 7: 6, 52: 7},
    "organs": {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 4, "stomach": 5, "pancreas": 6,
               "aorta": 7},
    "preprocessing": {"orientation": "RAS", "spacing": [3.0, 3.0, 3.0], "normalize": None,
                      "intensity": {"mode": "window", "window": [-160, 240], "clip": True}},
}
REAL_PRESETS = {
    "default": {"steps": 600, "shape": [64, 64, 32], "seeds": [0, 1, 2], "batch": 2},
    "tiny": {"steps": 2, "shape": [32, 32, 32], "seeds": [0], "batch": 2},
}


def make_volumes(n: int, first_seed: int, shape: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` phantoms (seeds ``first_seed...``): images ``(n, 1, *shape)`` in [-1, 1], labels ``(n, 1, *shape)``."""
    images, labels = [], []
    for k in range(n):
        ct, lab = make_phantom_ct(tuple(shape), seed=first_seed + k)
        hu = np.clip(ct.array.astype(np.float32), *HU_WINDOW)
        images.append((hu - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0]) * 2 - 1)
        labels.append(lab.array.astype(np.int64))
    return torch.from_numpy(np.stack(images)[:, None]), torch.from_numpy(np.stack(labels)[:, None])


def dice_per_organ(pred: torch.Tensor, ref: torch.Tensor, organs: dict[str, int] | None = None,
                   present_only: bool = False) -> dict[str, float]:
    """Dice of every organ between two label volumes (1.0 when both are empty; with ``present_only``, organs absent
    from ``ref`` are left out instead: a real scan's field of view decides which organs can be scored)."""
    out = {}
    for name, label in (ORGANS if organs is None else organs).items():
        p, r = pred == label, ref == label
        if present_only and not bool(r.any()):
            continue
        denom = int(p.sum()) + int(r.sum())
        out[name] = 1.0 if denom == 0 else 2.0 * int((p & r).sum()) / denom
    return out


def shared_data_dir() -> Path:
    """The shared real-data folder: ``$MEDEFF_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    env = os.environ.get("MEDEFF_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load_real_organs(data_dir: Path) -> dict[str, Any]:
    """The organ pipeline's training volume and held-out series, preprocessed as its training run does:
    ``(1, 1, i, j, k)`` images in [0, 1] and label volumes with the pipeline's 7 organs."""
    from medeff.data.transforms import eval_transforms

    folder = data_dir / REAL["folder"]
    if not folder.is_dir():
        raise FileNotFoundError(f"'{folder}' does not exist: --data organs reads the organ pipeline's CT from the "
                                "shared data folder; set MEDEFF_SHARED_DATA to the folder holding "
                                f"{REAL['folder']}/.")
    transform = eval_transforms({**REAL["preprocessing"], "label_remap": REAL["label_remap"]}, spatial_dims=3,
                                has_label=True)
    out: dict[str, Any] = {"organs": REAL["organs"]}
    for part in ("train", "test"):
        image, label = REAL[part]
        record = transform({"image": str(folder / image), "label": str(folder / label)})
        out[f"{part}_x"] = torch.as_tensor(np.asarray(record["image"]), dtype=torch.float32)[None]
        out[f"{part}_y"] = torch.as_tensor(np.asarray(record["label"]), dtype=torch.int64)[None]
    return out


def sample_patches(x: torch.Tensor, y: torch.Tensor, shape: list[int], count: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` patches of ``shape`` from one volume ``(1, 1, *spatial)``: even draws centred on a random organ
    voxel, odd draws anywhere (the organ recipe's 1:1 sampling); windows are clamped inside the volume."""
    spatial = x.shape[2:]
    if any(s < p for s, p in zip(spatial, shape)):
        raise ValueError(f"volume {tuple(spatial)} is smaller than the patch {shape}: use a smaller --shape.")
    organ_voxels = torch.nonzero(y[0, 0] > 0)
    xs, ys = [], []
    for k in range(count):
        if k % 2 == 0 and len(organ_voxels):
            centre = organ_voxels[int(torch.randint(len(organ_voxels), (1,), generator=generator))].tolist()
        else:
            centre = [int(torch.randint(s, (1,), generator=generator)) for s in spatial]
        starts = [min(max(c - p // 2, 0), s - p) for c, p, s in zip(centre, shape, spatial)]
        window = tuple(slice(a, a + p) for a, p in zip(starts, shape))
        xs.append(x[(0, slice(None), *window)])
        ys.append(y[(0, slice(None), *window)])
    return torch.stack(xs), torch.stack(ys)


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


def phantom_data(preset: dict[str, Any]) -> dict[str, Any]:
    """Phantom volumes of the default comparison, drawn whole (``batch`` volumes per step), scored volume by volume."""
    shape = [int(v) for v in preset["shape"]]
    train_x, train_y = make_volumes(preset["train_cases"], 100, shape)
    test_x, test_y = make_volumes(preset["test_cases"], 200, shape)

    def draw(generator: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randperm(train_x.shape[0], generator=generator)[:batch]
        return train_x[idx], train_y[idx]

    def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x[None]).argmax(1)[0]

    return {"organs": ORGANS, "present_only": False, "draw": draw, "predict": predict, "bn_images": train_x,
            "test": list(zip(test_x, test_y)), "fit": list(zip(train_x[:2], train_y[:2]))}


def real_data(preset: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    """The organ pipeline's CT: patches drawn from the training volume, whole-volume sliding-window scoring."""
    volumes = load_real_organs(data_dir)
    shape = [int(v) for v in preset["shape"]]

    def draw(generator: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_patches(volumes["train_x"], volumes["train_y"], shape, batch, generator)

    def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = sliding_window(model, x[None], roi_size=shape, sw_batch_size=2, overlap=0.5, fold_norms=False)
        return logits.argmax(1)[0]

    bn_x, _ = sample_patches(volumes["train_x"], volumes["train_y"], shape, 8, torch.Generator().manual_seed(7))
    return {"organs": volumes["organs"], "present_only": True, "draw": draw, "predict": predict,
            "bn_images": bn_x, "test": [(volumes["test_x"][0], volumes["test_y"][0])],
            "fit": [(volumes["train_x"][0], volumes["train_y"][0])],
            "shapes": {"train": list(volumes["train_x"].shape[2:]), "test": list(volumes["test_x"].shape[2:])}}


def train_and_score(side: dict[str, Any], data: dict[str, Any], *, seed: int, steps: int, batch: int,
                    lr: float, log_every: int = 0) -> dict[str, Any]:
    """Train one network from seed ``seed`` and return its Dice per organ on the test volumes and its step times."""
    torch.manual_seed(seed)
    organs, present_only = data["organs"], data["present_only"]
    model = build_side(side, 1, len(organs) + 1, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    order = torch.Generator().manual_seed(1000 + seed)  # same batches for both networks of a seed
    times, losses = [], []
    cpu0 = _cpu_s()
    for _ in range(steps):
        x, y = data["draw"](order, batch)
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

    def score(cases: list[tuple[torch.Tensor, torch.Tensor]]) -> list[dict[str, float]]:
        with torch.no_grad():
            return [dice_per_organ(data["predict"](model, x), y[0], organs, present_only) for x, y in cases]

    model.eval()
    raw = score(data["test"])  # as trained: running statistics of the batch norms from the last steps' momentum
    precise_bn(model, data["bn_images"])
    scores, train_scores = score(data["test"]), score(data["fit"])  # fit check: Dice on training volumes
    per_organ = {name: statistics.fmean(s[name] for s in scores) for name in scores[0]}
    train_dice = statistics.fmean(statistics.fmean(s.values()) for s in train_scores)
    return {"dice": per_organ, "mean_dice": statistics.fmean(per_organ.values()), "train_mean_dice": train_dice,
            "train_dice": {name: statistics.fmean(s[name] for s in train_scores) for name in train_scores[0]},
            "mean_dice_momentum_bn": statistics.fmean(statistics.fmean(r.values()) for r in raw),
            "step_median_s": statistics.median(times), "step_times_s": times, "train_wall_s": sum(times),
            "train_cpu_s": train_cpu_s, "loss_first": losses[0], "loss_last": statistics.fmean(losses[-5:])}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and SD (over seeds) of every organ's Dice and of the mean Dice."""
    def stats(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}

    return {"dice": {name: stats([r["dice"][name] for r in runs]) for name in runs[0]["dice"]},
            "mean_dice": stats([r["mean_dice"] for r in runs]),
            "mean_dice_momentum_bn": stats([r["mean_dice_momentum_bn"] for r in runs]),
            "train_mean_dice": stats([r["train_mean_dice"] for r in runs]),
            "step_median_s": statistics.median(r["step_median_s"] for r in runs)}


def markdown(report: dict[str, Any]) -> str:
    """Dice per organ (mean +- SD over seeds), FLOPs and step time of both networks as a Markdown table."""
    s = report["summary"]
    names = list(report["summary"])
    organs = list(s[names[0]]["dice"])
    lines = ["| organ | " + " | ".join(f"{n} Dice (mean +- SD)" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for organ in [*organs, "mean"]:
        cells = [s[n]["mean_dice"] if organ == "mean" else s[n]["dice"][organ] for n in names]
        lines.append(f"| {organ} | " + " | ".join(f"{c['mean']:.3f} +- {c['sd']:.3f}" for c in cells) + " |")
    for key, label in (("train_mean_dice", "mean, training volumes (fit)"),
                       ("mean_dice_momentum_bn", "mean, batch-norm statistics as left by training")):
        lines.append(f"| {label} | " + " | ".join(f"{s[n][key]['mean']:.3f} +- {s[n][key]['sd']:.3f}"
                                                  for n in names) + " |")
    lines.append("| forward GFLOPs | " + " | ".join(f"{report['flops'][n]['forward_flops'] / 1e9:.2f}"
                                                    for n in names) + " |")
    lines.append("| median train step (s) | " + " | ".join(f"{s[n]['step_median_s']:.2f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=["phantom", "organs"], default="phantom",
                        help="phantom organs (default) or the organ pipeline's real CT (needs the shared data)")
    parser.add_argument("--data-dir", default=None,
                        help="shared data folder for --data organs (default: $MEDEFF_SHARED_DATA or ../shared/data)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--shape", type=int, nargs=3, default=None,
                        help="phantom volume, or training patch with --data organs (i j k), multiples of 32")
    parser.add_argument("--train-cases", type=int, default=None)
    parser.add_argument("--test-cases", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=20, help="print the mean loss every N steps (0: never)")
    parser.add_argument("--sides", nargs="+", choices=sorted(SIDES), default=DEFAULT_SIDES,
                        help="networks to train (default: medeff and monai)")
    parser.add_argument("--output", default=None,
                        help="JSON report (default: benchmarks/results/unet_quality.json, "
                             "unet_quality_organs.json with --data organs)")
    args = parser.parse_args(argv)
    real = args.data == "organs"
    preset = dict((REAL_PRESETS if real else PRESETS)[args.preset])
    for key in ("seeds", "steps", "shape", "train_cases", "test_cases", "batch"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    output = Path(args.output or f"benchmarks/results/unet_quality{'_organs' if real else ''}.json")
    torch.set_num_threads(args.threads)
    shape = [int(v) for v in preset["shape"]]
    data = real_data(preset, Path(args.data_dir) if args.data_dir else shared_data_dir()) if real \
        else phantom_data(preset)
    spec = {"batch": preset["batch"], "channels": 1, "size": shape, "classes": len(data["organs"]) + 1}
    report: dict[str, Any] = {
        "environment": describe_environment(args.threads, {}),
        "settings": {**preset, "data": args.data, "lr": args.lr, "optimizer": "AdamW(weight_decay=1e-4)",
                     "loss": "DiceCE(include_background=False)", "organs": data["organs"], "sides": SIDES,
                     "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
                     **({"real_data": {k: REAL[k] for k in ("folder", "train", "test", "preprocessing")},
                         "volume_shapes": data["shapes"]} if real else {})},
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
    write_json_atomic(output, report, overwrite=True)
    print(report["markdown"])
    print(f"wrote {output} ({report['wall_s']:.0f} s wall, {report['cpu_s']:.0f} CPU s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
