"""State-dict naming: torchvision EfficientNet/EfficientNetV2 names -> medeff (timm) names, wrapper prefixes.

torchvision's EfficientNet is ``features.0`` (stem conv-norm-act), ``features.1 .. features.S`` (the stages;
``features.{s+1}.{b}`` is block ``b`` of stage ``s``), ``features.S+1`` (the 1x1 head conv-norm-act) and
``classifier.1`` (the linear layer after dropout). Each conv-norm-act is ``.0`` (conv) and ``.1`` (norm). A block
is a list ``block.{i}`` of conv-norm-act layers and at most one squeeze-excitation (``fc1``/``fc2``):

=====================  ==============================================  ==========================================
block                  torchvision layers, in order                    medeff names
=====================  ==============================================  ==========================================
MBConv, expansion > 1  expand 1x1, depthwise k, [SE], project 1x1      ``conv_pw/bn1, conv_dw/bn2, se, conv_pwl/bn3``
MBConv, expansion 1    depthwise k, [SE], project 1x1                  ``conv_dw/bn1, se, conv_pw/bn2`` (V1 stage 1)
FusedMBConv, exp. > 1  full k expand, project 1x1                      ``conv_exp/bn1, conv_pwl/bn2``
FusedMBConv, exp. 1    full k conv (with activation)                   ``conv/bn1`` (V2 stage 1)
=====================  ==============================================  ==========================================

The block kind is read from the tensors themselves (number of conv layers, and whether the first conv is
depthwise), so the mapping needs no model and no torchvision.

MONAI's ``EfficientNetBN`` and the ``efficientnet_pytorch`` package share another layout (V1 only): ``_conv_stem``,
``_bn0``, ``_blocks.*``, ``_conv_head``, ``_bn1``, ``_fc``. A block is ``_expand_conv``/``_bn0`` (absent at
expansion 1), ``_depthwise_conv``/``_bn1``, ``_se_reduce``/``_se_expand`` and ``_project_conv``/``_bn2``. MONAI
numbers blocks ``_blocks.{stage}.{global index}``; efficientnet_pytorch numbers them ``_blocks.{global index}`` and
a new stage starts at each block whose input and output channels differ (true of every EfficientNet stage start).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = [
    "WRAPPER_PREFIXES",
    "efficientnet_pytorch_to_timm",
    "is_efficientnet_pytorch_state_dict",
    "is_torchvision_state_dict",
    "strip_prefixes",
    "torchvision_generation",
    "torchvision_to_timm",
]

#: Prefixes added by training wrappers: Lightning modules (``net.``/``model.``), DataParallel/DDP (``module.``),
#: ``torch.compile`` (``_orig_mod.``).
WRAPPER_PREFIXES = ("net.", "model.", "module.", "_orig_mod.")

_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_BLOCK_KEY = re.compile(r"features\.(\d+)\.(\d+)\.block\.(\d+)\.(.+)")
_EP_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(?:(\d+)\.)?(_[a-z0-9_]+)\.(.+)")


def is_torchvision_state_dict(state: Mapping[str, torch.Tensor]) -> bool:
    """True when ``state`` uses torchvision's EfficientNet names (``features.0.0.weight`` and no ``conv_stem``)."""
    return "features.0.0.weight" in state and not any(k.endswith("conv_stem.weight") for k in state)


def torchvision_generation(state: Mapping[str, torch.Tensor]) -> int:
    """1 or 2: whether a torchvision-named state dict is an EfficientNet (V1) or an EfficientNetV2.

    V1 starts with a depthwise-separable block (first conv depthwise), V2 with a full convolution (Fused-MBConv).
    The two differ in BatchNorm eps (1e-5 and 1e-3), so the loader must know.

    Raises:
        ValueError: no first block in ``state``.
    """
    first = state.get("features.1.0.block.0.0.weight")
    if first is None or first.ndim < 3:
        raise ValueError("no first block ('features.1.0.block.0.0.weight') to tell EfficientNet from EfficientNetV2.")
    return 1 if first.shape[1] == 1 and first.shape[0] > 1 else 2


def is_efficientnet_pytorch_state_dict(state: Mapping[str, torch.Tensor]) -> bool:
    """True for MONAI ``EfficientNetBN`` / efficientnet_pytorch names (``_conv_stem.weight``, ``_blocks.*``)."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


_EP_BLOCK_NAMES = {
    "mb": {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
           "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl", "_bn2": "bn3"},
    "ds": {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
           "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"},
}
_EP_TOP_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                 "_fc": "classifier"}


def efficientnet_pytorch_to_timm(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str],
                                                                                 bool]:
    """Rename a MONAI ``EfficientNetBN`` / efficientnet_pytorch state dict to medeff's (timm's) names.

    Args:
        state: tensors named ``_conv_stem``, ``_blocks.*``, ...

    Returns:
        ``(renamed, unknown, monai)``: the renamed tensors, ``{key: reason}`` for keys that fit no known layer, and
        whether the blocks were numbered the MONAI way (``_blocks.{stage}.{index}``).

    Raises:
        ValueError: a block without the tensors that tell its channels.
    """
    layers: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
    stage_given: dict[int, int] = {}
    for k, v in state.items():
        m = _EP_BLOCK_KEY.fullmatch(k)
        if m:
            index = int(m.group(2)) if m.group(2) is not None else int(m.group(1))
            if m.group(2) is not None:
                stage_given[index] = int(m.group(1))
            layers.setdefault(index, {}).setdefault(m.group(3), {})[m.group(4)] = v
    monai = bool(stage_given)
    place: dict[int, tuple[int, int, str]] = {}
    stage, count, prev_stage = -1, 0, None
    for index in sorted(layers):
        block = layers[index]
        try:
            dw = block["_depthwise_conv"]["weight"]
            out_ch = block["_project_conv"]["weight"].shape[0]
        except KeyError as exc:
            raise ValueError(f"block _blocks.{index} has no {exc.args[0]} tensor.") from exc
        in_ch = block["_expand_conv"]["weight"].shape[1] if "_expand_conv" in block else dw.shape[0]
        new_stage = stage_given[index] != prev_stage if monai else (in_ch != out_ch or stage < 0)
        if new_stage:
            stage, count = stage + 1, 0
        prev_stage = stage_given.get(index)
        place[index] = (stage, count, "mb" if "_expand_conv" in block else "ds")
        count += 1

    out: dict[str, torch.Tensor] = {}
    unknown: dict[str, str] = {}
    for k, v in state.items():
        new: str | None = None
        m = _EP_BLOCK_KEY.fullmatch(k)
        if m:
            index = int(m.group(2)) if m.group(2) is not None else int(m.group(1))
            s, b, kind = place[index]
            layer = _EP_BLOCK_NAMES[kind].get(m.group(3))
            new = f"blocks.{s}.{b}.{layer}.{m.group(4)}" if layer else None
        else:
            head, _, tail = k.partition(".")
            new = f"{_EP_TOP_NAMES[head]}.{tail}" if head in _EP_TOP_NAMES and tail else None
        if new is None:
            unknown[k] = "not an EfficientNet layer in MONAI's / efficientnet_pytorch's naming"
        else:
            out[new] = v
    return out, unknown, monai


def strip_prefixes(state: Mapping[str, torch.Tensor], model_keys: set[str]) -> tuple[dict[str, torch.Tensor], list[str],
                                                                                         dict[str, str]]:
    """Remove wrapper prefixes that most keys share and the model's own names do not.

    A prefix from :data:`WRAPPER_PREFIXES` is stripped when at least half of the keys start with it and no model
    key does; keys without it (a Lightning module's loss weights, say) are set aside.

    Args:
        state: the state dict as read.
        model_keys: the target model's state-dict keys.

    Returns:
        ``(state, stripped, set_aside)``: the renamed dict, the prefixes removed (in order), and
        ``{key: reason}`` for keys dropped because they lacked the prefix.
    """
    out = dict(state)
    stripped: list[str] = []
    aside: dict[str, str] = {}
    changed = True
    while changed and out:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if any(k.startswith(prefix) for k in model_keys):
                continue
            with_prefix = [k for k in out if k.startswith(prefix)]
            if with_prefix and 2 * len(with_prefix) >= len(out):
                path = "".join(stripped)
                for k in out:
                    if not k.startswith(prefix):
                        aside[path + k] = f"outside the '{path}{prefix}' sub-module holding the network"
                out = {k[len(prefix):]: v for k, v in out.items() if k.startswith(prefix)}
                stripped.append(prefix)
                changed = True
                break
    return out, stripped, aside


def _conv_norm(prefix: str, conv: str, norm: str, rest: str) -> str | None:
    if rest == "0.weight" or rest == "0.bias":
        return f"{prefix}{conv}.{rest[2:]}"
    if rest.startswith("1.") and rest[2:] in _BN_SUFFIXES:
        return f"{prefix}{norm}.{rest[2:]}"
    return None


def _block_roles(layers: dict[int, dict[str, torch.Tensor]]) -> dict[int, tuple[str, str]]:
    """Map each ``block.{i}`` of one torchvision block to ``(conv name, norm name)`` or ``("se", "")``."""
    conv_idx = [i for i in sorted(layers) if "0.weight" in layers[i]]
    se_idx = [i for i in sorted(layers) if "fc1.weight" in layers[i]]
    roles: dict[int, tuple[str, str]] = {i: ("se", "") for i in se_idx}
    first = layers[conv_idx[0]]["0.weight"] if conv_idx else None
    depthwise_first = first is not None and first.shape[1] == 1 and first.shape[0] > 1
    if len(conv_idx) == 1:
        names = [("conv", "bn1")]
    elif len(conv_idx) == 2 and depthwise_first:
        names = [("conv_dw", "bn1"), ("conv_pw", "bn2")]
    elif len(conv_idx) == 2:
        names = [("conv_exp", "bn1"), ("conv_pwl", "bn2")]
    elif len(conv_idx) == 3:
        names = [("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")]
    else:
        raise ValueError(f"a torchvision EfficientNet block has 1-3 conv layers, found {len(conv_idx)}.")
    roles.update(dict(zip(conv_idx, names)))
    return roles


def torchvision_to_timm(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Rename a torchvision EfficientNet / EfficientNetV2 state dict to medeff's (timm's) names.

    Args:
        state: torchvision-named tensors (``features.*``, ``classifier.1.*``).

    Returns:
        ``(renamed, unknown)``: the renamed tensors, and ``{key: reason}`` for keys that fit no known layer.

    Raises:
        ValueError: a block whose layers match no EfficientNet block kind.
    """
    stage_ids = sorted({int(m.group(1)) for k in state if (m := _BLOCK_KEY.fullmatch(k))})
    feature_ids = sorted({int(k.split(".")[1]) for k in state
                          if k.startswith("features.") and k.split(".")[1].isdigit()})
    head_id = max(feature_ids) if feature_ids else -1
    stage_of = {fid: s for s, fid in enumerate(stage_ids)}

    blocks: dict[tuple[int, int], dict[int, dict[str, torch.Tensor]]] = {}
    for k, v in state.items():
        m = _BLOCK_KEY.fullmatch(k)
        if m:
            fid, b, i, rest = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
            blocks.setdefault((fid, b), {}).setdefault(i, {})[rest] = v
    roles = {key: _block_roles(layers) for key, layers in blocks.items()}

    out: dict[str, torch.Tensor] = {}
    unknown: dict[str, str] = {}
    for k, v in state.items():
        new: str | None = None
        m = _BLOCK_KEY.fullmatch(k)
        if m:
            fid, b, i, rest = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
            prefix = f"blocks.{stage_of[fid]}.{b}."
            conv, norm = roles[(fid, b)][i] if i in roles[(fid, b)] else ("", "")
            if conv == "se":
                se = {"fc1": "conv_reduce", "fc2": "conv_expand"}
                head, _, tail = rest.partition(".")
                new = f"{prefix}se.{se[head]}.{tail}" if head in se else None
            elif conv:
                new = _conv_norm(prefix, conv, norm, rest)
        elif k.startswith("features.0."):
            new = _conv_norm("", "conv_stem", "bn1", k[len("features.0."):])
        elif k.startswith(f"features.{head_id}.") and head_id not in stage_of:
            new = _conv_norm("", "conv_head", "bn2", k[len(f"features.{head_id}."):])
        elif k in ("classifier.1.weight", "classifier.1.bias"):
            new = "classifier." + k.rsplit(".", 1)[1]
        if new is None:
            unknown[k] = "not an EfficientNet layer in torchvision's naming"
        else:
            out[new] = v
    return out, unknown
