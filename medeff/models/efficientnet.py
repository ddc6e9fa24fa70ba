"""The EfficientNet network (V1 and V2, 1D/2D/3D): stem, stages of blocks, optional classification head.

Parameter names mirror timm's EfficientNet (``conv_stem``, ``bn1``, ``blocks.{stage}.{block}.*``,
``conv_head``, ``bn2``, ``classifier``), so a timm 2D state dict maps nearly 1:1 onto a 2D model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medeff.layers import check_spatial_dims, make_dropout, norm_act, to_tuple
from medeff.models.anisotropy import plan_levels
from medeff.models.arch import ArchDef
from medeff.models.blocks import BLOCKS, LayerConfig, check_recompute, check_switch, recompute
from medeff.models.conventions import (
    WeightsConvention,
    apply_convention,
    decode_record,
    encode_record,
    model_convention,
)
from medeff.models.features import FeatureInfo, FeatureSpec
from medeff.models.scaling import round_channels, round_repeats

__all__ = ["EfficientNet", "resolve_levels"]


def _memory_format(spatial_dims: int) -> torch.memory_format | None:
    return {2: torch.channels_last, 3: torch.channels_last_3d}.get(spatial_dims)


def _layout(channels_last: bool | str, spatial_dims: int) -> bool | str:
    """``True`` / ``False`` / ``"auto"`` from the ``channels_last`` argument (``"auto"`` only matters in 2D/3D)."""
    if check_switch("channels_last", channels_last) == "auto":
        return "auto" if spatial_dims in (2, 3) else False
    return channels_last and _memory_format(spatial_dims) is not None


def resolve_levels(
    num_levels: int,
    spatial_dims: int,
    strides: Sequence[int | Sequence[int]] | None = None,
    kernels: Sequence[Sequence[int | None] | None] | None = None,
    spacing: Sequence[float] | None = None,
) -> tuple[list[tuple[int, ...]] | None, list[tuple[int | None, ...] | None]]:
    """Validate explicit per-level strides/kernels, or plan them from ``spacing``.

    Args:
        num_levels: levels of the architecture (stem + downsampling stages).
        spatial_dims: 1, 2 or 3.
        strides: one entry per level: an int or per-axis ints (e.g. ``(1, 2, 2)``).
        kernels: one entry per level: ``None`` or per-axis ``int | None`` (an int replaces the block kernel
            along that axis, typically 1 along a coarse axis).
        spacing: input voxel spacing; fills whichever of ``strides``/``kernels`` is not given
            (see :func:`medeff.models.anisotropy.plan_levels`).

    Returns:
        ``(strides or None, kernels)`` with one tuple (or None) per level.

    Raises:
        ValueError: wrong number of levels or axes.
    """
    if spacing is not None:
        if len(spacing) != spatial_dims:
            raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} axes but spatial_dims={spatial_dims}.")
        planned_strides, planned_kernels = plan_levels(spacing, num_levels)
        strides = planned_strides if strides is None else strides
        kernels = planned_kernels if kernels is None else kernels
    out_strides = None
    if strides is not None:
        if len(strides) != num_levels:
            raise ValueError(f"strides needs one entry per resolution level ({num_levels}: stem + each downsampling "
                             f"stage), got {len(strides)}: {list(strides)}.")
        out_strides = [to_tuple(s, spatial_dims, "stride") for s in strides]
    out_kernels: list[tuple[int | None, ...] | None] = [None] * num_levels
    if kernels is not None:
        if len(kernels) != num_levels:
            raise ValueError(f"kernels needs one entry per resolution level ({num_levels}), got {len(kernels)}: "
                             f"{list(kernels)}.")
        for i, k in enumerate(kernels):
            if k is None:
                continue
            k = (k,) * spatial_dims if isinstance(k, int) else tuple(k)
            if len(k) != spatial_dims or any(v is not None and int(v) < 1 for v in k):
                raise ValueError(f"kernels[{i}] = {k!r}: expected {spatial_dims} entries, each a positive int or None.")
            out_kernels[i] = tuple(None if v is None else int(v) for v in k)
    return out_strides, out_kernels


def _apply_kernel(kernel: tuple[int, ...], override: tuple[int | None, ...] | None) -> tuple[int, ...]:
    if override is None:
        return kernel
    return tuple(k if o is None else o for k, o in zip(kernel, override))


def _accept_missing_record(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    """Let ``load_state_dict`` accept state dicts written before the record existed: the model keeps its settings."""
    state_dict.setdefault(prefix + "_extra_state", encode_record(None))


class EfficientNet(nn.Module):
    """EfficientNet encoder with an optional classification head.

    Args:
        arch: the architecture (see :data:`medeff.models.arch.ARCH_DEFS`).
        spatial_dims: 1, 2 or 3. 2.5D input is ``spatial_dims=2`` with neighbouring slices as channels.
        in_channels: input channels.
        num_classes: classifier outputs (0: return pooled features).
        width: channel multiplier.
        depth: repeat multiplier.
        dropout: dropout before the classifier.
        drop_path_rate: stochastic depth; block ``i`` of ``n`` drops its branch with ``rate * i / n``.
        norm: ``"batch"`` (eps 1e-3, momentum 0.1), ``"instance"``, ``"group"`` or ``(name, kwargs)``.
        act: activation name (default: the architecture's, ``"silu"``; ``"relu6"`` for EfficientNet-Lite).
        memory_efficient: memory-efficient SiLU (saves only the input for backward).
        padding: ``"same"`` (symmetric) or ``"same_tf"`` (TF dynamic padding, for TF-ported weights).
        strides: per-level strides (stem + each downsampling stage), e.g. ``[(1,2,2), (1,2,2), 2, 2, 2]``.
        kernels: per-level kernel overrides, e.g. ``[(1,None,None), (1,None,None), None, None, None]``.
        spacing: input voxel spacing; plans ``strides``/``kernels`` when those are not given.
        features_only: no head; ``forward`` returns the list of features described by ``feature_info``.
        out_indices: indices into ``stage_info`` of the returned features (default: the last stage of each
            resolution level).
        checkpointing: activation checkpointing per stage in training (recomputes the stage in backward).
        channels_last: ``True``: channels_last / channels_last_3d for weights and inputs (2D/3D); ``"auto"``
            (default): 2D and 3D inputs on CPU run in channels_last / channels_last_3d from the stem on (oneDNN's
            channels-last depthwise and 1x1 convolutions: a 2D B0 train step takes about 0.75x the time of NCHW,
            a 3D B0 train step about 0.85x and its inference 0.75x of NCDHW); other devices, tracing and export
            keep the input's layout; ``False``: never.
        head_channels: channels of ``conv_head`` before width scaling (default from ``arch``).
        fast_depthwise: 3D depthwise convs use :class:`medeff.ops.FastDepthwiseConv3d`, whose CPU
            backward is several times faster than PyTorch's (same parameters and results).
        recompute: MBConv blocks recompute their expansion (1x1 conv, norm, act) in backward, keeping less for
            backward (:func:`medeff.models.blocks.recompute`). ``"auto"`` (default; ``None`` means the same): in
            3D encoders (``features_only``, as in a U-Net) for inputs on the CPU, where it lowers the peak memory of
            a train step by about 12% for about 3% more time; off in classifiers, whose peak falls in the backward
            of their first stages where the recompute rebuilds what it saved (same peak, 15% more time); off on
            GPUs, where the extra launches slowed a 3D B0 train step, and in 1D/2D. ``True``: on every device.
            Ignored when ``checkpointing`` is on (whole stages are recomputed then) and inside ``torch.compile``.

    Attributes:
        stage_info: :class:`FeatureInfo` of the stem and every stage end.
        feature_info: :class:`FeatureInfo` of the features ``forward_features`` returns.
        layer_config: the :class:`LayerConfig` (norm, act, padding) shared with decoders.
        level_kernels: per-level kernel overrides in use (``None`` entries keep the blocks' kernels).
        num_features: channels entering the classifier.
        weights_convention: the :class:`~medeff.models.conventions.WeightsConvention` (BatchNorm eps, padding,
            activation, input mean/std) the weights follow: the model's own settings when built, the source's after
            :func:`medeff.models.load_weights`. It is saved in the state dict (``_extra_state``) and restored by
            ``load_state_dict``, which re-applies its eps and padding.
        pretrained_cfg: what pretrained weights expect of the input (mean, std, input size, interpolation, their
            source and convention) when the model was created with ``pretrained=`` (see
            :func:`medeff.models.pretrained.load_pretrained`); None otherwise.

    Example:
        >>> from medeff.models.arch import ARCH_DEFS
        >>> net = EfficientNet(ARCH_DEFS["efficientnet"], spatial_dims=3, in_channels=1, num_classes=2)
        >>> net.eval()(torch.zeros(1, 1, 32, 32, 32)).shape
        torch.Size([1, 2])
    """

    pretrained_cfg: dict[str, Any] | None = None

    def __init__(
        self,
        arch: ArchDef,
        *,
        spatial_dims: int = 2,
        in_channels: int = 3,
        num_classes: int = 1000,
        width: float = 1.0,
        depth: float = 1.0,
        dropout: float = 0.2,
        drop_path_rate: float = 0.2,
        norm: Any = "batch",
        act: str | None = None,
        memory_efficient: bool = False,
        padding: str = "same",
        strides: Sequence[int | Sequence[int]] | None = None,
        kernels: Sequence[Sequence[int | None] | None] | None = None,
        spacing: Sequence[float] | None = None,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        checkpointing: bool = False,
        channels_last: bool | str = "auto",
        head_channels: int | None = None,
        fast_depthwise: bool = True,
        recompute: bool | str | None = "auto",
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
        if not 0.0 <= drop_path_rate < 1.0 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout and drop_path_rate must lie in [0, 1), got {dropout}, {drop_path_rate}.")
        self.spatial_dims = spatial_dims
        self.features_only = features_only
        self.checkpointing = checkpointing
        self.channels_last = _layout(channels_last, spatial_dims)
        recompute = check_recompute(recompute)
        if recompute == "auto":
            recompute = "auto" if spatial_dims == 3 and features_only else False
        act = arch.act if act is None else act
        cfg = LayerConfig(spatial_dims, norm, act, memory_efficient, padding, fast_depthwise,
                          recompute=False if checkpointing else recompute)
        self.layer_config = cfg
        self.weights_convention: WeightsConvention = model_convention(cfg)
        self.register_load_state_dict_pre_hook(_accept_missing_record)
        level_strides, level_kernels = resolve_levels(arch.num_levels, spatial_dims, strides, kernels, spacing)
        self.level_kernels = level_kernels
        rl = arch.round_limit

        # stem
        stem_ch = round_channels(arch.stem_channels, width if arch.scale_stem else 1.0, round_limit=rl)
        stride = level_strides[0] if level_strides else to_tuple(2, spatial_dims)
        kernel = _apply_kernel(to_tuple(arch.stem_kernel, spatial_dims), level_kernels[0])
        self.conv_stem = cfg.conv(in_channels, stem_ch, kernel, stride)
        self.bn1 = cfg.bn(stem_ch)
        self.act1 = cfg.make_act()
        reduction = stride
        specs = [FeatureSpec("act1", stem_ch, reduction, -1, 0)]

        # stages
        fixed = {0, len(arch.stages) - 1} if arch.fix_first_last else set()
        repeats = [s.repeats if i in fixed else round_repeats(s.repeats, depth) for i, s in enumerate(arch.stages)]
        total, block_idx, level, cin = sum(repeats), 0, 0, stem_ch
        stages: list[nn.Module] = []
        for i, (spec, n) in enumerate(zip(arch.stages, repeats)):
            cout = round_channels(spec.out_channels, width, round_limit=rl)
            if spec.downsamples:
                level += 1
                stride = level_strides[level] if level_strides else to_tuple(spec.stride, spatial_dims, "stride")
            else:
                stride = to_tuple(1, spatial_dims)
            kernel = _apply_kernel(to_tuple(spec.kernel, spatial_dims, "kernel"), level_kernels[level])
            blocks = []
            for j in range(n):
                block_stride = stride if j == 0 else to_tuple(1, spatial_dims)
                blocks.append(BLOCKS[spec.type](cfg, cin, cout, kernel, block_stride, spec.expansion, spec.se_ratio,
                                                spec.skip, drop_path_rate * block_idx / total))
                cin, block_idx = cout, block_idx + 1
            reduction = tuple(r * s for r, s in zip(reduction, stride))
            stages.append(nn.Sequential(*blocks))
            specs.append(FeatureSpec(f"blocks.{i}", cout, reduction, i, level))
        self.blocks = nn.Sequential(*stages)
        self.stage_info = FeatureInfo(specs)

        if out_indices is None:
            last_of_level = {s.level: k for k, s in enumerate(specs)}
            out_indices = sorted(last_of_level.values())
        self.feature_info = self.stage_info.select(list(out_indices))
        self.out_indices = tuple(i % len(specs) for i in out_indices)

        # head
        self.num_features = cin
        if not features_only:
            head_ch = round_channels(head_channels or arch.head_channels, width if arch.scale_head else 1.0,
                                     round_limit=rl)
            self.conv_head = cfg.conv(cin, head_ch, 1)
            self.bn2 = cfg.bn(head_ch)
            self.act2 = cfg.make_act()
            self.head_drop = make_dropout(spatial_dims, dropout)
            self.num_features = head_ch
            self.classifier = nn.Linear(head_ch, num_classes) if num_classes > 0 else nn.Identity()
        if self.channels_last is True:
            self.to(memory_format=_memory_format(spatial_dims))

    def get_extra_state(self) -> torch.Tensor:
        """The weights convention as a ``uint8`` tensor (JSON bytes), stored under ``_extra_state``."""
        return encode_record(self.weights_convention)

    def set_extra_state(self, state: torch.Tensor) -> None:
        """Apply a weights convention from a state dict (an empty record keeps the model's settings).

        Raises:
            CheckpointError: a malformed record, or a convention this model cannot follow (another activation,
                BatchNorm weights in a model built with another norm).
        """
        convention = decode_record(state)
        if convention is not None:
            apply_convention(self, convention)

    def _to_format(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last is True:
            return x.contiguous(memory_format=_memory_format(self.spatial_dims))
        if (self.channels_last == "auto" and x.device.type == "cpu" and x.dim() in (4, 5)
                and not torch.jit.is_tracing() and not torch.jit.is_scripting() and not torch.onnx.is_in_onnx_export()):
            return x.contiguous(memory_format=_memory_format(x.dim() - 2))  # weights stay as they are: oneDNN follows x
        return x

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        # a one-channel input is contiguous in both layouts, and the convolution then keeps NC...: "auto" sets the
        # layout again on the stem's output (a no-op when it came out channels-last)
        return self._to_format(self.conv_stem(self._to_format(x)))

    def _stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return recompute(stage, (stage,), x)  # batch norms update their running stats once
        return stage(x)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the features listed in ``feature_info``, shallow to deep.

        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            One tensor per ``feature_info`` entry, ``(B, channels, *spatial / reduction)``.
        """
        x = norm_act(self.bn1, self.act1, self._stem(x))
        wanted, last = set(self.out_indices), max(self.out_indices)
        feats = [x] if 0 in wanted else []
        for i, stage in enumerate(self.blocks):
            if i + 1 > last:
                break
            x = self._stage(stage, x)
            if i + 1 in wanted:
                feats.append(x)
        return feats

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Classification head on the deepest stage output: 1x1 conv, norm, act, pool, dropout, linear."""
        x = norm_act(self.bn2, self.act2, self.conv_head(x))
        x = x.mean(dim=tuple(range(2, x.ndim)))
        x = self.head_drop(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(B, num_classes)``, or the feature list when ``features_only``."""
        if self.features_only:
            return self.forward_features(x)
        x = norm_act(self.bn1, self.act1, self._stem(x))
        for stage in self.blocks:
            x = self._stage(stage, x)
        return self.forward_head(x)
