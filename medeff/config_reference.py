"""The configuration reference (``docs/configuration.md``), generated from the YAML files in ``conf/``.

The comments in the YAML files are the documentation: a comment on the line of a key, or on the lines right above
it, describes that key; the comment lines at the top of a file describe the file. Generating the reference from the
files keeps it true; a test regenerates it and compares it with the committed page. To refresh the page after
editing ``conf/``::

    python -c "from medeff.config_reference import write_reference; write_reference('docs/configuration.md')"
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from medeff.config import conf_dir
from medeff.utils.atomic import write_text_atomic

__all__ = ["GLOSSARY", "ConfKey", "ConfFile", "parse_conf_file", "render_reference", "write_reference"]

_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_+~][\w.+~/@-]*|\"[^\"]+\")\s*:(?P<rest>.*)$")
_LIST_ITEM = re.compile(r"^\s*-\s")

_INTRO = """# Configuration reference

medeff's commands are configured with [Hydra](https://hydra.cc) files in `conf/`. Top-level files are the entry
configs of the commands (`train.yaml` for `medeff train`, `predict.yaml` for `medeff predict`, ...); sub-folders are
config groups, chosen with `group=option` (e.g. `model=efficientnet_b2`) and refined with `key=value` overrides
(e.g. `data.batch_size=16`, `trainer.max_epochs=5`). An experiment (`experiment=nodule_2d`) is an override file that
selects options for several groups at once. In `train`, keys added with `+key=value` are passed through as they
are, e.g. `+trainer.strategy=ddp`; `evaluate`, `report`, `predict` and `index` take only the keys their file defines,
and any other key (`+bootstrap.n_resample=10`) is refused with "did you mean" and the valid keys. A wrong group option
is answered with the list of valid options; a wrong value of a medeff key (a threshold outside [0, 1], a batch size
below 1) names the key and its valid values.

This page is generated from the files themselves (their comments are the descriptions), and a test checks that it is
up to date; edit the YAML and regenerate it with
`python -c "from medeff.config_reference import write_reference; write_reference('docs/configuration.md')"`.
A value shown as `???` must be given; `${...}` refers to another key (OmegaConf interpolation).
"""


@dataclass
class ConfKey:
    """One key of a config file: dotted path, value as written (scalars and flow collections), description."""

    path: str
    value: str
    doc: str


@dataclass
class ConfFile:
    """One YAML file: its name relative to ``conf/``, its leading description and its keys."""

    name: str
    doc: str
    defaults: list[str] = field(default_factory=list)
    keys: list[ConfKey] = field(default_factory=list)


def _split_comment(text: str) -> tuple[str, str]:
    """``value  # comment`` -> (value, comment); a ``#`` inside quotes is kept."""
    quote = None
    for i, ch in enumerate(text):
        if ch in "\"'" and quote in (None, ch):
            quote = None if quote == ch else ch
        elif ch == "#" and quote is None and (i == 0 or text[i - 1].isspace()):
            return text[:i].strip(), text[i + 1:].strip()
    return text.strip(), ""


def parse_conf_file(path: Path, root: Path) -> ConfFile:
    """Read keys, values and comments of one config file (block-style YAML as medeff's files are written).

    Args:
        path: the YAML file.
        root: the ``conf/`` folder (names are relative to it).

    Returns:
        The file's description, its ``defaults`` entries and every key (nested keys as dotted paths).
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    out = ConfFile(name=path.relative_to(root).as_posix(), doc="")
    header: list[str] = []
    i = 0
    while i < len(lines) and lines[i].lstrip().startswith("#"):
        text = lines[i].lstrip()[1:].strip()
        if not text.startswith("@package"):
            header.append(text)
        i += 1
    out.doc = " ".join(header)
    pending: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, key)
    in_defaults = False
    last: tuple[int, ConfKey] | None = None  # key whose inline comment may continue on the next lines
    for line in lines[i:]:
        stripped = line.strip()
        if not stripped:
            pending, last = [], None
            continue
        if stripped.startswith("#"):
            indent = len(line) - len(line.lstrip())
            if last is not None and indent > last[0]:  # indented further: continues the inline comment above
                last[1].doc = f"{last[1].doc} {stripped[1:].strip()}".strip()
            else:
                pending.append(stripped[1:].strip())
                last = None
            continue
        last = None
        if _LIST_ITEM.match(line):
            if in_defaults:
                out.defaults.append(_split_comment(stripped[1:].strip())[0])
            pending = []
            continue
        m = _KEY.match(line)
        if not m:
            pending = []
            continue
        indent = len(m.group("indent"))
        key = m.group("key").strip('"')
        value, comment = _split_comment(m.group("rest"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        in_defaults = dotted == "defaults"
        doc = " ".join(pending + ([comment] if comment else []))
        pending = []
        if in_defaults:
            continue
        if value == "" or value in ("|", ">"):
            stack.append((indent, key))
            if doc:
                out.keys.append(ConfKey(dotted, "", doc))
                if comment:
                    last = (indent, out.keys[-1])
            continue
        out.keys.append(ConfKey(dotted, value, doc))
        if comment:
            last = (indent, out.keys[-1])
    return out


# Keys that mean the same thing in every file they appear in (Hydra, Lightning and medeff conventions). A comment in
# the YAML file wins over these.
GLOSSARY: dict[str, str] = {
    "_target_": "class or function built from this block (Hydra `instantiate`)",
    "_partial_": "build a factory that takes the remaining arguments later (e.g. the model parameters)",
    "name": "name of this option, recorded in run folders and checkpoints",
    "run_name": "name of the run folder under `outputs/train/`",
    "task_name": "top folder of the outputs of this command",
    "seed": "random seed (Python, NumPy, torch; data order and augmentation)",
    "threads": "torch/OpenMP threads",
    "output": "file written by the command",
    "out_dir": "folder the command writes into",
    "output_dir": "folder the command writes into",
    "overwrite": "replace existing outputs (otherwise an existing output is an error)",
    "formats": "report files to write: html, pdf, json, csv",
    "results": "results.json written by `medeff evaluate`",
    "index": "dataset index JSON written by `medeff index`",
    "task": "classification | segmentation | joint",
    "kind": "what the block describes (task kind, or data source kind: archive | volume)",
    "spatial_dims": "2 or 3",
    "context_slices": "2.5D: neighbouring slices on each side stacked as channels",
    "in_channels": "input channels of the network (2 * context_slices + 1 for 2.5D)",
    "num_classes": "number of output classes of the network",
    "class_names": "class names (default: from the index)",
    "label_names": "names of the label values of the masks (default: from the index)",
    "fold": "validation fold of the index (patient-level); the other folds train",
    "patch_size": "network input size per axis (voxels)",
    "batch_size": "samples per step",
    "val_batch_size": "samples per validation step",
    "num_workers": "data loader worker processes (0: in the main process)",
    "cache_rate": "fraction of the preprocessed cases kept in memory after the first epoch",
    "drop_path_rate": "stochastic depth rate of the last block (linear schedule from 0)",
    "deep_supervision": "also train on logits at coarser decoder scales",
    "monitor": "metric that picks the best checkpoint (and early stopping)",
    "monitor_mode": "max or min for the monitored metric",
    "interval": "scheduler step: step (every optimizer step) or epoch",
    "lr": "learning rate",
    "weight_decay": "weight decay",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum",
    "flip_prob": "probability of a flip along each axis in `flip_axes`",
    "flip_axes": "spatial axes that may be flipped",
    "rot90_prob": "probability of a random multiple-of-90-degree rotation",
    "rot90_axes": "the plane of the 90-degree rotations",
    "rotate_prob": "probability of a small random rotation",
    "rotate_deg": "largest rotation angle, degrees",
    "intensity_prob": "probability of intensity scaling and shifting",
    "scale": "largest relative intensity scale change",
    "shift": "largest intensity shift (in normalised units)",
    "noise_prob": "probability of additive Gaussian noise",
    "noise_std": "standard deviation of that noise (normalised units)",
    "crop": "random crops for training: how patches are sampled",
    "label_smoothing": "label smoothing of the cross-entropy",
    "focal_gamma": "focusing parameter of the focal loss",
    "include_background": "count the background label in the Dice loss and metrics",
    "lambda_dice": "weight of the Dice term of the loss",
    "lambda_ce": "weight of the cross-entropy term of the loss",
    "deep_supervision_weights": "loss weight per supervised scale, finest first",
    "roi_size": "sliding-window size for validation (voxels)",
    "sw_batch_size": "windows per forward pass in the sliding window",
    "overlap": "sliding-window overlap fraction",
    "sw_mode": "blending of overlapping windows: gaussian | constant",
    "accelerator": "Lightning accelerator: cpu | gpu | auto",
    "devices": "number of devices (processes with DDP)",
    "precision": "Lightning precision: 32-true, 16-mixed or bf16-mixed (CUDA)",
    "strategy": "Lightning strategy, e.g. ddp (gloo on CPU, nccl on CUDA)",
    "sync_batchnorm": "synchronise BatchNorm statistics across DDP processes",
    "max_epochs": "epochs to train",
    "min_epochs": "epochs before early stopping may stop",
    "check_val_every_n_epoch": "validate every n epochs",
    "log_every_n_steps": "log training metrics every n steps",
    "gradient_clip_val": "clip the gradient norm to this value",
    "deterministic": "deterministic algorithms (exact resume and reproducibility, slower)",
    "enable_progress_bar": "show progress bars",
    "num_sanity_val_steps": "validation batches run before training (0: none)",
    "limit_train_batches": "batches per training epoch (fraction or count)",
    "limit_val_batches": "batches per validation (fraction or count)",
    "overfit_batches": "train and validate on these few batches (debugging)",
    "profiler": "Lightning profiler: simple | advanced",
    "dirpath": "folder of the checkpoints",
    "filename": "checkpoint file name pattern",
    "auto_insert_metric_name": "put the metric name into file names",
    "mode": "max or min for the monitored metric",
    "save_top_k": "best checkpoints kept",
    "save_last": "also keep last.ckpt (for resume)",
    "save_on_train_epoch_end": "save after training (true) or after validation (false) of an epoch",
    "logging_interval": "learning rate logged every step or epoch",
    "patience": "validations without improvement before stopping",
    "check_finite": "stop when the monitored metric becomes NaN or inf",
    "save_dir": "folder of the logs",
    "description": "what the case measures",
    "input": "input of the case: batch, channels, size per axis, classes, task",
    "sides": "the models compared (builder + keyword arguments, see medeff.benchmarks.peers)",
    "loss": "loss function",
    "threshold": "triage: positive when the positive-class score >= threshold",
    "factory": "learning-rate schedule built per run",
}

# Keys named freely under these parents (e.g. the compared models of a benchmark case).
CHILDREN: dict[str, str] = {
    "sides": "one of the compared models: its builder (see medeff.benchmarks.peers) and keyword arguments",
}


def _describe(key: ConfKey) -> str:
    if key.doc:
        return key.doc
    parts = key.path.split(".")
    if len(parts) > 1 and parts[-2] in CHILDREN:
        return CHILDREN[parts[-2]]
    return GLOSSARY.get(parts[-1], "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _render_file(cf: ConfFile, level: str) -> list[str]:
    lines = [f"{level} `{cf.name}`", ""]
    if cf.doc:
        lines += [cf.doc, ""]
    if cf.defaults:
        lines += ["Defaults: " + ", ".join(f"`{d}`" for d in cf.defaults) + ".", ""]
    if cf.keys:
        lines += ["| key | value | meaning |", "|---|---|---|"]
        for k in cf.keys:
            value = f"`{_cell(k.value)}`" if k.value else ""
            lines.append(f"| `{k.path}` | {value} | {_cell(_describe(k))} |")
        lines.append("")
    return lines


def render_reference(root: str | Path | None = None) -> str:
    """The whole reference page as Markdown: entry configs first, then every group with every option.

    Args:
        root: the ``conf/`` folder (default: the one medeff uses, see :func:`medeff.config.conf_dir`).
    """
    root = Path(root) if root is not None else Path(conf_dir())
    lines = [_INTRO, "## Entry configs", ""]
    for path in sorted(root.glob("*.yaml")):
        lines += _render_file(parse_conf_file(path, root), "###")
    groups = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    lines += ["## Config groups", "", "| group | options |", "|---|---|"]
    for g in groups:
        options = ", ".join(f"`{p.stem}`" for p in sorted(g.glob("*.yaml")))
        lines.append(f"| `{g.name}` | {options} |")
    lines.append("")
    for g in groups:
        lines += [f"### Group `{g.name}`", ""]
        for path in sorted(g.glob("*.yaml")):
            lines += _render_file(parse_conf_file(path, root), "####")
    return "\n".join(lines).rstrip() + "\n"


def write_reference(path: str | Path, root: str | Path | None = None) -> Path:
    """Write :func:`render_reference` to ``path`` atomically and return the path."""
    path = Path(path)
    write_text_atomic(path, render_reference(root))
    return path
