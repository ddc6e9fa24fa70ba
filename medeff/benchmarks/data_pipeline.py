"""``medeff bench data``: samples per second of each experiment's training pipeline beside its model's train step.

For every case of ``conf/bench_data.yaml`` (an experiment, its data and overrides), :func:`run_data_bench`:

1. builds the dataset index when the case names a source (a folder such as ``lidc_nodule_slices_64``, or a CSV
   manifest written from the listed rows) or takes the given index;
2. composes the ``train`` config of the experiment and builds its data module exactly as ``medeff train`` does;
3. **pipeline**: times ``setup()`` (the cached deterministic preprocessing: reading, decoding, resampling, the cost
   only the first epoch pays) and then ``epochs`` passes over the training ``DataLoader`` (at most
   ``max_batches`` batches each), including the batch augmentation when the recipe turns it on. Reported per
   epoch: samples, wall seconds, CPU seconds (this process and its finished loader workers), samples/s;
4. **model**: after every pass, ``model_steps`` train steps of the experiment's network, loss and optimizer on the
   pass's first batch (forward, loss, backward, update; ``model_warmup`` untimed steps before the first round):
   samples/s = batch / median step time of the round;
5. **peer**: the same records through MONAI's own per-sample chain (``LoadImaged`` for files, then the same
   MONAI preprocessing and augmentation transforms, in a MONAI ``CacheDataset`` and ``DataLoader`` with the same
   batch size and workers), timed the same way, each pass again followed by model steps; with
   ``peers.batchgenerators`` also nnU-Net's batchgenerators transforms (:func:`batchgenerators_reference`).

``ratio`` = the median over the later rounds of (pipeline samples/s of the pass) / (model samples/s of the same
round): how many train steps the pipeline could feed per step the model takes. Pipeline and model alternate, so a
busy phase of a shared machine slows both sides of a round. ``cpu_ratio`` is the same with samples per CPU second.
``goal`` is the lowest acceptable ratio. ``first_epoch`` extrapolates the first epoch over the whole training set
(setup + full-epoch samples / first-pass rate); ``first_epoch_ratio`` compares it with the first round's model.

Everything runs in this process with ``threads`` torch threads (loader workers fork from it). The machine's load
average is recorded at start and end: on a shared machine the wall-clock rates move with it, the CPU-second
rates much less.
"""

from __future__ import annotations

import copy
import csv
import resource
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medeff.benchmarks.data_peers import batchgenerators_reference, monai_reference_dataset
from medeff.benchmarks.environment import cpu_model, load_average
from medeff.errors import ConfigError
from medeff.utils.atomic import check_writable, write_json_atomic
from medeff.utils.logging import get_logger
from medeff.utils.options import look_up
from medeff.utils.threads import wait_settings

__all__ = ["run_data_bench", "format_data_report", "build_case_index", "monai_reference_dataset",
           "batchgenerators_reference"]

log = get_logger(__name__)


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# ---- index -------------------------------------------------------------------------------------------------------
def build_case_index(name: str, case: Mapping[str, Any], shared_data: Path, work_dir: Path) -> Path | None:
    """The dataset index of a case: ``index`` as given, or built from ``source`` (folder or manifest rows).

    Returns:
        The index path, or None when the case's data is absent (the case is then skipped).

    Raises:
        ConfigError: the case names neither ``index`` nor ``source``.
    """
    from medeff.data import build_index, index_config

    if case.get("index"):
        path = Path(str(case["index"]))
        return path if path.is_file() else None
    source = case.get("source") or {}
    if not source:
        raise ConfigError(f"bench_data: case '{name}' names neither an index nor a source.",
                          hint=f"set case_defs.{name}.index=PATH or case_defs.{name}.source.")
    out = work_dir / str(source.get("folder") or name) / "index.json"
    overrides = [*map(str, source.get("index_overrides") or []), "overwrite=true"]
    if source.get("folder"):
        src = shared_data / str(source["folder"])
        if not src.exists():
            return None
    else:
        rows = list(source.get("rows") or [])
        files = [shared_data / str(r[k]) for r in rows for k in ("image", "label") if r.get(k)]
        if not rows or not all(f.exists() for f in files):
            return None
        src = out.parent / "manifest.csv"
        src.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["image", "label", "patient_id", "fold"])
            writer.writeheader()
            for i, r in enumerate(rows):
                writer.writerow({"image": shared_data / str(r["image"]),
                                 "label": shared_data / str(r["label"]) if r.get("label") else "",
                                 "patient_id": f"p{i}", "fold": int(r.get("fold", 0))})
        overrides += ["csv.allow_outside_root=true", "csv.fold_col=fold"]
    if out.is_file() and source.get("reuse", True) and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    build_index(src, out, index_config([_shared(o, shared_data) for o in overrides]))
    return out


def _shared(text: str, shared_data: Path) -> str:
    return text.replace("{shared_data}", str(shared_data))


# ---- building ----------------------------------------------------------------------------------------------------
def _compose(case: Mapping[str, Any], index: Path, extra: Sequence[str]) -> Any:
    from medeff.config import compose

    return compose("train", [f"experiment={case['experiment']}", f"data.index={index}",
                             *map(str, case.get("overrides") or []), *extra])


def _build(cfg: Any) -> tuple[Any, Any, Any]:
    """Data module, task (net + loss) and optimizer, built as ``medeff train`` builds them."""
    from medeff.engine.train import DATAMODULE, build, resolve_config

    resolved = resolve_config(cfg)
    extra: dict[str, Any] = {}
    if cfg.get("seed") is not None and cfg.data.get("_target_") == DATAMODULE and "seed" not in cfg.data:
        extra["seed"] = int(cfg.seed)
    dm = build(cfg.data, "data", augmentation=resolved.get("augmentation") or {}, **extra)
    dm.prepare_index()
    net = build(cfg.model, "model")
    pretrained = getattr(net, "pretrained_cfg", None)
    if isinstance(pretrained, dict) and hasattr(dm, "use_model_normalization"):
        dm.use_model_normalization(pretrained.get("mean"), pretrained.get("std"))
    names = {} if str(cfg.task.kind) == "classification" else {"label_names": dm.label_names}
    task = build(cfg.task, "task", net=net, optimizer=None, scheduler=None, **names)
    if cfg.get("optimizer"):
        optimizer = build(cfg.optimizer, "optimizer")(task.net.parameters())
    else:
        import torch

        optimizer = torch.optim.AdamW(task.net.parameters(), lr=1e-3)
    return dm, task, optimizer


# ---- timing ------------------------------------------------------------------------------------------------------
def _passes(make_loader, epochs: int, max_batches: int | None, augment=None,
            between=None) -> list[dict[str, Any]]:
    """``epochs`` passes over fresh iterators of ``make_loader()``; per pass samples, wall and CPU seconds.

    ``between(batch)``, when given, runs after every pass with the pass's first batch (the model's steps of the
    round) and its result is stored under the pass's ``model``.
    """
    out = []
    for _ in range(epochs):
        loader = make_loader()
        n, first = 0, None
        t0, c0 = time.perf_counter(), _cpu_seconds()
        it = iter(loader)
        for i, batch in enumerate(it):
            if augment is not None:
                batch = augment(batch)
            n += int(batch["image"].shape[0])
            first = batch if first is None else first
            if max_batches is not None and i + 1 >= max_batches:
                break
        del it  # loader workers exit and are reaped here, so their CPU time is counted
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        entry = {"samples": n, "wall_s": wall, "cpu_s": cpu, "samples_per_s": n / wall if wall > 0 else None,
                 "samples_per_cpu_s": n / cpu if cpu > 0 else None}
        if between is not None:
            entry["model"] = between(first)
        out.append(entry)
    return out


def _summary(setup_s: float, setup_cpu_s: float, passes: list[dict[str, Any]], epoch_samples: int) -> dict[str, Any]:
    """Rates of the first epoch (extrapolated) and the later ones, and the per-round pipeline/model ratios."""
    later = passes[1:] or passes[:1]
    first_rate = passes[0]["samples_per_s"]
    first_epoch_s = setup_s + epoch_samples / first_rate if first_rate else None
    out = {"setup_s": setup_s, "setup_cpu_s": setup_cpu_s, "epochs": passes, "epoch_samples": epoch_samples,
           "first_epoch_s": first_epoch_s,
           "first_epoch_samples_per_s": epoch_samples / first_epoch_s if first_epoch_s else None,
           "later_samples_per_s": statistics.median(p["samples_per_s"] or 0.0 for p in later),
           "later_samples_per_cpu_s": statistics.median(p["samples_per_cpu_s"] or 0.0 for p in later)}
    if all("model" in p for p in passes):
        model = [p["model"]["samples_per_s"] for p in passes]
        out["model_samples_per_s"] = statistics.median(model)
        out["ratio"] = statistics.median((p["samples_per_s"] or 0.0) / m for p, m in zip(later, model[1:] or model))
        out["first_epoch_ratio"] = (out["first_epoch_samples_per_s"] or 0.0) / model[0]
        cpu = [p["model"]["samples_per_cpu_s"] for p in later]
        if all(cpu) and all(p["samples_per_cpu_s"] for p in later):
            out["cpu_ratio"] = statistics.median(p["samples_per_cpu_s"] / c for p, c in zip(later, cpu))
    return out


class _ModelSteps:
    """The model's train steps of one round: forward, the task's loss, backward, optimizer update."""

    def __init__(self, task: Any, optimizer: Any, steps: int, warmup: int) -> None:
        self.task, self.optimizer, self.steps, self.warmup = task, optimizer, steps, warmup
        self.rounds: list[dict[str, Any]] = []

    def _step(self, batch: Mapping[str, Any], i: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # self.log() outside a Trainer: a no-op, with a warning
            warnings.simplefilter("ignore")
            loss = self.task.training_step(dict(batch), i)
        loss = loss["loss"] if isinstance(loss, Mapping) else loss
        loss.backward()
        self.optimizer.step()

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        self.task.train()
        if not self.rounds:
            for i in range(self.warmup):
                self._step(batch, i)
        times, cpu = [], []
        for i in range(self.steps):
            t0, c0 = time.perf_counter(), _cpu_seconds()
            self._step(batch, i)
            times.append(time.perf_counter() - t0)
            cpu.append(_cpu_seconds() - c0)
        n, med = int(batch["image"].shape[0]), statistics.median(times)
        result = {"batch": n, "input_shape": list(batch["image"].shape), "step_s": times, "median_step_s": med,
                  "samples_per_s": n / med, "samples_per_cpu_s": n / statistics.median(cpu) if min(cpu) > 0 else None}
        self.rounds.append(result)
        return result


def _run_case(name: str, case: Mapping[str, Any], cfg: Mapping[str, Any], shared_data: Path,
              work_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"experiment": case["experiment"], "description": case.get("description", ""),
                              "overrides": list(case.get("overrides") or []), "goal": case.get("goal")}
    index = build_case_index(name, case, shared_data, work_dir)
    if index is None:
        reason = f"the case's data is not under {shared_data} (set MEDEFF_SHARED_DATA or shared_data=PATH)"
        log.warning("bench data: skipping %s: %s", name, reason)
        return {**result, "status": "skipped", "reason": reason}
    epochs, max_batches = int(cfg["epochs"]), cfg.get("max_batches")
    max_batches = None if max_batches is None else int(max_batches)
    extra = [f"data.num_workers={cfg['num_workers']}"] if cfg.get("num_workers") is not None else []
    train_cfg = _compose(case, index, [*extra, *map(str, cfg.get("overrides") or [])])
    dm, task, optimizer = _build(train_cfg)
    result["num_workers"] = dm.num_workers
    result["batch_size"] = dm.batch_size
    result["batch_augmentation"] = bool(getattr(dm, "batch_augmentation", False))
    result["cache_dir"] = getattr(dm, "cache_dir", None)
    model = _ModelSteps(task, optimizer, int(cfg["model_steps"]), int(cfg["model_warmup"]))
    # medeff pipeline: setup (first epoch only) + passes, each followed by the model's steps of that round
    t0, c0 = time.perf_counter(), _cpu_seconds()
    dm.setup("fit")
    setup_s, setup_cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    augment = dm.augment_batch if getattr(dm, "batch_augment", None) is not None else None
    crop = dict(dm.augmentation.get("crop") or {})
    per_item = int(crop.get("num_samples", 1)) if dm.kind == "volume" and crop.get("mode", "none") != "none" else 1
    epoch_samples = len(dm.train_ds) * per_item
    passes = _passes(dm.train_dataloader, epochs, max_batches, augment, between=model)
    result["medeff"] = _summary(setup_s, setup_cpu, passes, epoch_samples)
    # MONAI's per-sample chain on the same records, interleaved with the model the same way
    if cfg.get("peers", {}).get("monai", True):
        t0, c0 = time.perf_counter(), _cpu_seconds()
        ds, loader = monai_reference_dataset(dm)
        peer_setup, peer_cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        peer_passes = _passes(lambda: loader, epochs, max_batches, between=model)
        result["monai"] = _summary(peer_setup, peer_cpu, peer_passes, len(ds) * per_item)
        del ds, loader
    if cfg.get("peers", {}).get("batchgenerators", False):
        t0, c0 = time.perf_counter(), _cpu_seconds()
        peer = batchgenerators_reference(dm, (cfg.get("peers") or {}).get("batchgenerators_path"),
                                         int(cfg.get("seed", 0)))
        if isinstance(peer, str):
            log.warning("bench data: no batchgenerators peer for %s: %s", name, peer)
            result["batchgenerators"] = {"status": "skipped", "reason": peer}
        else:
            bg_setup, bg_cpu = time.perf_counter() - t0, _cpu_seconds() - c0
            bg_passes = _passes(peer[0], epochs, max_batches, between=model)
            result["batchgenerators"] = _summary(bg_setup, bg_cpu, bg_passes, peer[1])
    rounds = model.rounds
    result["model"] = {**rounds[0], "samples_per_s": statistics.median(r["samples_per_s"] for r in rounds),
                       "samples_per_cpu_s": statistics.median(r["samples_per_cpu_s"] or 0.0 for r in rounds),
                       "median_step_s": statistics.median(r["median_step_s"] for r in rounds),
                       "step_s": [t for r in rounds for t in r["step_s"]]}
    result["ratio"] = result["medeff"]["ratio"]
    result["first_epoch_ratio"] = result["medeff"]["first_epoch_ratio"]
    if "monai" in result:
        result["monai_ratio"] = result["monai"]["ratio"]
    goal = case.get("goal")
    result["passed"] = None if goal is None else bool(result["ratio"] >= float(goal))
    result["status"] = "ok"
    return result


def run_data_bench(cfg: Mapping[str, Any], *, write: bool = True) -> dict[str, Any]:
    """Run the cases of a ``conf/bench_data.yaml`` mapping; write the JSON report to ``cfg["output"]``.

    Returns:
        ``{"environment": ..., "settings": ..., "cases": {name: result}}``; a case has ``status`` (``ok`` /
        ``skipped`` with ``reason``), ``medeff`` and ``monai`` (``setup_s``, per-epoch ``epochs``,
        ``first_epoch_samples_per_s``, ``later_samples_per_s``, ``later_samples_per_cpu_s``), ``model``
        (``samples_per_s``, ``median_step_s``, ``batch``), ``ratio`` (pipeline later epochs / model), ``goal``,
        ``passed``.

    Raises:
        ConfigError: an unknown case, or epochs/model_steps below 1.
    """
    import monai
    import torch

    cfg = copy.deepcopy(dict(cfg))
    defs = cfg.get("case_defs") or {}
    cases = list(cfg.get("cases") or defs)
    for name in cases:
        look_up(name, defs, what="data benchmark case", key="cases")
    if int(cfg.get("epochs", 0)) < 1 or int(cfg.get("model_steps", 0)) < 1:
        raise ConfigError(f"bench_data: epochs and model_steps must be >= 1 (got {cfg.get('epochs')}, "
                          f"{cfg.get('model_steps')}).", hint="e.g. epochs=3 model_steps=3")
    output = Path(cfg["output"]) if write and cfg.get("output") else None
    if output is not None:
        check_writable(output, overwrite=bool(cfg.get("overwrite", True)))
    torch.set_num_threads(int(cfg.get("threads", 2)))
    shared_data, work_dir = Path(str(cfg["shared_data"])).absolute(), Path(str(cfg["work_dir"]))
    report: dict[str, Any] = {
        "environment": {"torch": torch.__version__, "monai": monai.__version__, "threads": torch.get_num_threads(),
                        "cpu_model": cpu_model(), "load_average_start": load_average(),
                        "wait_policy": wait_settings()},  # the OpenMP wait policy this process started with
        "settings": {k: cfg.get(k) for k in ("epochs", "max_batches", "model_steps", "model_warmup", "threads",
                                             "num_workers", "overrides")},
        "cases": {},
    }
    for name in cases:
        log.info("bench data: case %s", name)
        report["cases"][name] = _run_case(name, defs[name], cfg, shared_data, work_dir)
        report["environment"]["load_average_end"] = load_average()
        if output is not None:
            write_json_atomic(output, report, overwrite=True)
            report["output"] = str(output)
    return report


# ---- report ------------------------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_data_report(report: Mapping[str, Any]) -> str:
    """Markdown tables of a :func:`run_data_bench` report (pipelines, model, ratios and goals)."""
    env = report.get("environment", {})
    lines = [f"torch {env.get('torch')}, MONAI {env.get('monai')}, {env.get('threads')} threads, "
             f"{env.get('cpu_model')}, load average at start {env.get('load_average_start')}, at end "
             f"{env.get('load_average_end')}", "",
             "| case | workers | pipeline | setup (s) | first epoch (samples/s) | later epochs (samples/s) | "
             "later (samples/CPU-s) | model step (samples/s) | ratio | first-epoch ratio | CPU-s ratio | goal | "
             "result |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in report.get("cases", {}).items():
        if c.get("status") != "ok":
            lines.append(f"| {name} |" + " - |" * 11 + f" {c.get('status')}: {c.get('reason')} |")
            continue
        for side in ("medeff", "monai", "batchgenerators"):
            if side not in c or "ratio" not in c[side]:
                continue
            s = c[side]
            ratio, model = s["ratio"], s["model_samples_per_s"]
            goal = c.get("goal")
            res = "-" if goal is None else ("met" if ratio >= float(goal) else "not met")
            label = side + (" (batch aug)" if side == "medeff" and c.get("batch_augmentation") else "") + \
                (" (disk cache)" if side == "medeff" and c.get("cache_dir") else "")
            lines.append(f"| {name} | {c['num_workers']} | {label} | {_fmt(s['setup_s'])} | "
                         f"{_fmt(s['first_epoch_samples_per_s'])} | {_fmt(s['later_samples_per_s'])} | "
                         f"{_fmt(s['later_samples_per_cpu_s'])} | {_fmt(model)} | {_fmt(ratio, 2)} | "
                         f"{_fmt(s.get('first_epoch_ratio'), 2)} | {_fmt(s.get('cpu_ratio'), 2)} | "
                         f"{'-' if goal is None else '>= ' + str(goal)} | {res} |")
    return "\n".join(lines)
