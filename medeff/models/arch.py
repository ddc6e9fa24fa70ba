"""EfficientNet architectures as data: typed block specs parsed once from compact strings or dicts.

A block string is a ``_``-separated list of tokens; the first names the block type, the others are
``key`` + value::

    "mb_r2_k3_s2_e6_c24_se0.25"     MBConv, 2 repeats, kernel 3, stride 2, expand 6, 24 out channels, SE 0.25
    "fmb_r4_k3_s2_e4_c48"           Fused-MBConv (EfficientNetV2)
    "mb_r1_k1x3x3_s1x2x2_e6_c40"    per-axis kernel and stride (3D; 'x' separates axes)
    "cba_r2_k3_s1_e1_c24_skip"      conv-norm-act block with a residual when shapes allow

Block types: ``ds`` (depthwise-separable, first V1 stage), ``mb`` (MBConv / inverted residual), ``fmb``
(Fused-MBConv), ``cba`` (conv-norm-act). Keys: ``r`` repeats, ``k`` kernel, ``s`` stride, ``e`` expansion,
``c`` out channels, ``se`` squeeze-excitation ratio (relative to the block *input* channels, as in
EfficientNet), flags ``skip``/``noskip``. The same fields are accepted as a dict (``type``, ``repeats``,
``kernel``, ``stride``, ``expansion``, ``out_channels``, ``se_ratio``, ``skip``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["ARCH_DEFS", "BLOCK_TYPES", "ArchDef", "BlockSpec", "parse_arch", "parse_block"]

BLOCK_TYPES = {
    "ds": "depthwise-separable conv (dw conv, SE, pointwise conv)",
    "mb": "MBConv / inverted residual (expand 1x1, depthwise, SE, project 1x1)",
    "fmb": "Fused-MBConv (full expand conv, SE, project 1x1)",
    "cba": "conv-norm-act",
}
_STRING_KEYS = {"r": "repeats", "k": "kernel", "s": "stride", "e": "expansion", "c": "out_channels", "se": "se_ratio"}
_FLAGS = {"skip": True, "noskip": False}


@dataclass(frozen=True)
class BlockSpec:
    """One stage of identical blocks (the first of which may stride).

    Attributes:
        type: block type, one of :data:`BLOCK_TYPES`.
        repeats: number of blocks before depth scaling (>= 1).
        kernel: kernel size per axis; a one-element tuple is isotropic.
        stride: stride of the first block per axis; a one-element tuple is isotropic.
        expansion: channel expansion ratio of the hidden layer.
        out_channels: output channels before width scaling.
        se_ratio: squeeze-excitation ratio relative to block input channels (0 = no SE).
        skip: add the residual when input and output shapes match.
    """

    type: str
    repeats: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    expansion: float
    out_channels: int
    se_ratio: float = 0.0
    skip: bool = True

    def __post_init__(self) -> None:
        if self.type not in BLOCK_TYPES:
            raise ValueError(f"Unknown block type {self.type!r}; valid types: {', '.join(BLOCK_TYPES)}.")
        if self.repeats < 1 or self.out_channels < 1 or self.expansion <= 0:
            raise ValueError(f"Block {self}: repeats, out_channels and expansion must be positive.")
        if not self.kernel or any(k < 1 for k in self.kernel) or not self.stride or any(s < 1 for s in self.stride):
            raise ValueError(f"Block {self}: kernel and stride must be positive integers.")
        if not 0.0 <= self.se_ratio < 1.0:
            raise ValueError(f"Block {self}: se_ratio must lie in [0, 1).")

    @property
    def downsamples(self) -> bool:
        """Whether the stage's first block strides along any axis."""
        return any(s > 1 for s in self.stride)


def _axes(value: str, token: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split("x"))
    except ValueError:
        raise ValueError(f"Bad value in block token {token!r}: expected an int or per-axis ints like 1x3x3.") from None


def _parse_string(text: str) -> dict[str, Any]:
    tokens = [t for t in text.strip().split("_") if t]
    if not tokens:
        raise ValueError("Empty block string; expected e.g. 'mb_r2_k3_s2_e6_c24_se0.25'.")
    out: dict[str, Any] = {"type": tokens[0]}
    if tokens[0] not in BLOCK_TYPES:
        raise ValueError(f"Unknown block type token {tokens[0]!r} in {text!r}; valid types: {', '.join(BLOCK_TYPES)}.")
    for token in tokens[1:]:
        if token in _FLAGS:
            out["skip"] = _FLAGS[token]
            continue
        match = re.fullmatch(r"(se|[rksec])(.+)", token)
        if match is None:
            raise ValueError(f"Unknown token {token!r} in block string {text!r}; valid keys: "
                             f"{', '.join(_STRING_KEYS)} (e.g. r2, k3, s2, e6, c24, se0.25) and flags "
                             f"{', '.join(_FLAGS)}.")
        key, value = match.groups()
        name = _STRING_KEYS[key]
        if name in out:
            raise ValueError(f"Token {token!r} repeats key {key!r} in block string {text!r}.")
        try:
            if name in ("kernel", "stride"):
                out[name] = _axes(value, token)
            elif name in ("expansion", "se_ratio"):
                out[name] = float(value)
            else:
                out[name] = int(value)
        except ValueError as err:
            raise ValueError(f"Bad value in token {token!r} of block string {text!r}: {err}") from None
    return out


def parse_block(spec: str | Mapping[str, Any] | BlockSpec) -> BlockSpec:
    """Parse a block string or dict into a :class:`BlockSpec`.

    Args:
        spec: a block string (see module docstring), a dict with :class:`BlockSpec` field names, or a spec.

    Returns:
        The frozen spec.

    Raises:
        ValueError: naming the bad token or key and listing the valid ones, or a missing required field.
    """
    if isinstance(spec, BlockSpec):
        return spec
    if isinstance(spec, str):
        values = _parse_string(spec)
    elif isinstance(spec, Mapping):
        valid = [f.name for f in fields(BlockSpec)]
        unknown = [k for k in spec if k not in valid]
        if unknown:
            raise ValueError(f"Unknown block key(s) {unknown} in {dict(spec)!r}; valid keys: {', '.join(valid)}.")
        values = dict(spec)
        for name in ("kernel", "stride"):
            if name in values:
                v = values[name]
                values[name] = (int(v),) if isinstance(v, int) else tuple(int(x) for x in v)
    else:
        raise ValueError(f"A block must be a string or a dict, got {type(spec).__name__}: {spec!r}.")
    values.setdefault("kernel", (3,))
    values.setdefault("stride", (1,))
    values.setdefault("expansion", 1.0)
    missing = [k for k in ("repeats", "out_channels") if k not in values]
    if missing:
        keys = {"repeats": "r", "out_channels": "c"}
        raise ValueError(f"Block {spec!r} lacks {', '.join(missing)} (string keys "
                         f"{', '.join(keys[m] for m in missing)}).")
    return BlockSpec(**values)


@dataclass(frozen=True)
class ArchDef:
    """A whole architecture before scaling.

    Attributes:
        name: family name (for messages and docs).
        stages: one :class:`BlockSpec` per stage.
        stem_channels: stem conv output channels (scaled with width).
        head_channels: channels of the final 1x1 conv before pooling (scaled with width).
        round_limit: channel rounding never goes below ``round_limit`` times the scaled value
            (0.9 for V1/V2-S/M/L; 0 for the V2-B variants, as published).
        stem_kernel: stem conv kernel size.
        scale_stem: scale the stem channels with width (False for EfficientNet-Lite: the stem stays 32).
        scale_head: scale the head channels with width (False for EfficientNet-Lite: the head stays 1280).
        fix_first_last: keep the repeats of the first and last stage when scaling depth (EfficientNet-Lite).
        act: the activation the architecture was published with (``"relu6"`` for EfficientNet-Lite); the default
            of :class:`medeff.models.EfficientNet` when no ``act`` is given.
    """

    name: str
    stages: tuple[BlockSpec, ...]
    stem_channels: int = 32
    head_channels: int = 1280
    round_limit: float = 0.9
    stem_kernel: int = 3
    scale_stem: bool = True
    scale_head: bool = True
    fix_first_last: bool = False
    act: str = "silu"

    @property
    def num_levels(self) -> int:
        """Number of resolution levels: the stem plus each downsampling stage."""
        return 1 + sum(1 for s in self.stages if s.downsamples)


def parse_arch(name: str, blocks: Sequence[str | Mapping[str, Any] | BlockSpec], **kwargs: Any) -> ArchDef:
    """Build an :class:`ArchDef` from block strings/dicts (``kwargs`` go to :class:`ArchDef`).

    Raises:
        ValueError: a bad block (see :func:`parse_block`), or an empty block list.
    """
    if not blocks:
        raise ValueError(f"Architecture {name!r} has no blocks.")
    return ArchDef(name=name, stages=tuple(parse_block(b) for b in blocks), **kwargs)


ARCH_DEFS: dict[str, ArchDef] = {
    "efficientnet": parse_arch("efficientnet", [
        "ds_r1_k3_s1_e1_c16_se0.25",
        "mb_r2_k3_s2_e6_c24_se0.25",
        "mb_r2_k5_s2_e6_c40_se0.25",
        "mb_r3_k3_s2_e6_c80_se0.25",
        "mb_r3_k5_s1_e6_c112_se0.25",
        "mb_r4_k5_s2_e6_c192_se0.25",
        "mb_r1_k3_s1_e6_c320_se0.25",
    ]),
    # EfficientNet-Lite (TensorFlow's mobile/edge variant): the B0 table without squeeze-excitation, ReLU6, stem,
    # head and the first/last stage repeats fixed under scaling.
    "efficientnet_lite": parse_arch("efficientnet_lite", [
        "ds_r1_k3_s1_e1_c16",
        "mb_r2_k3_s2_e6_c24",
        "mb_r2_k5_s2_e6_c40",
        "mb_r3_k3_s2_e6_c80",
        "mb_r3_k5_s1_e6_c112",
        "mb_r4_k5_s2_e6_c192",
        "mb_r1_k3_s1_e6_c320",
    ], scale_stem=False, scale_head=False, fix_first_last=True, act="relu6"),
    "efficientnetv2_base": parse_arch("efficientnetv2_base", [
        "cba_r1_k3_s1_e1_c16_skip",
        "fmb_r2_k3_s2_e4_c32",
        "fmb_r2_k3_s2_e4_c48",
        "mb_r3_k3_s2_e4_c96_se0.25",
        "mb_r5_k3_s1_e6_c112_se0.25",
        "mb_r8_k3_s2_e6_c192_se0.25",
    ], round_limit=0.0),
    "efficientnetv2_s": parse_arch("efficientnetv2_s", [
        "cba_r2_k3_s1_e1_c24_skip",
        "fmb_r4_k3_s2_e4_c48",
        "fmb_r4_k3_s2_e4_c64",
        "mb_r6_k3_s2_e4_c128_se0.25",
        "mb_r9_k3_s1_e6_c160_se0.25",
        "mb_r15_k3_s2_e6_c256_se0.25",
    ], stem_channels=24),
    "efficientnetv2_m": parse_arch("efficientnetv2_m", [
        "cba_r3_k3_s1_e1_c24_skip",
        "fmb_r5_k3_s2_e4_c48",
        "fmb_r5_k3_s2_e4_c80",
        "mb_r7_k3_s2_e4_c160_se0.25",
        "mb_r14_k3_s1_e6_c176_se0.25",
        "mb_r18_k3_s2_e6_c304_se0.25",
        "mb_r5_k3_s1_e6_c512_se0.25",
    ], stem_channels=24),
    "efficientnetv2_l": parse_arch("efficientnetv2_l", [
        "cba_r4_k3_s1_e1_c32_skip",
        "fmb_r7_k3_s2_e4_c64",
        "fmb_r7_k3_s2_e4_c96",
        "mb_r10_k3_s2_e4_c192_se0.25",
        "mb_r19_k3_s1_e6_c224_se0.25",
        "mb_r25_k3_s2_e6_c384_se0.25",
        "mb_r7_k3_s1_e6_c640_se0.25",
    ], stem_channels=32),
}
"""The published block tables (EfficientNet B0, EfficientNet-Lite and EfficientNetV2), one source of truth for every
variant."""
