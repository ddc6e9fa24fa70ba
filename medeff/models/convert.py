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
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = ["WRAPPER_PREFIXES", "is_torchvision_state_dict", "strip_prefixes", "torchvision_to_timm"]

#: Prefixes added by training wrappers: Lightning modules (``net.``/``model.``), DataParallel/DDP (``module.``),
#: ``torch.compile`` (``_orig_mod.``).
WRAPPER_PREFIXES = ("net.", "model.", "module.", "_orig_mod.")

_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_BLOCK_KEY = re.compile(r"features\.(\d+)\.(\d+)\.block\.(\d+)\.(.+)")


def is_torchvision_state_dict(state: Mapping[str, torch.Tensor]) -> bool:
    """True when ``state`` uses torchvision's EfficientNet names (``features.0.0.weight`` and no ``conv_stem``)."""
    return "features.0.0.weight" in state and not any(k.endswith("conv_stem.weight") for k in state)


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
