"""Shapes, feature_info, tasks, anisotropic strides, options and error messages of the model family."""

from __future__ import annotations

import pytest
import torch

from medeff.errors import ConfigError
from medeff.layers import DropPath
from medeff.models import EfficientNet, EfficientNetUNet, create_model, list_models

from .helpers import zero_model

SMALL = "efficientnetv2_b0"  # fewest blocks: cheapest to run


def _check_features(model, dims, size=64):
    with torch.no_grad():
        feats = model.forward_features(torch.zeros(1, model.conv_stem.in_channels, *(size,) * dims))
    assert len(feats) == len(model.feature_info) == 5
    for f, spec in zip(feats, model.feature_info):
        assert f.shape[1] == spec.channels
        assert tuple(f.shape[2:]) == tuple(size // r for r in spec.reduction)
    assert model.feature_info.reduction()[-1] == (32,) * dims
    assert model.stage_info[0].module == "act1" and model.stage_info[-1].module.startswith("blocks.")


@pytest.mark.parametrize("name", list_models())
def test_feature_info_matches_features_2d(name):
    """feature_info (recorded at build time) equals the actual feature shapes, for every model."""
    _check_features(zero_model(name), 2)


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_b3", "efficientnetv2_s", "efficientnetv2_b0",
                                  "efficientnet_lite0"])
def test_feature_info_matches_features_3d(name):
    _check_features(zero_model(name, spatial_dims=3, in_channels=1, features_only=True), 3, size=32)


@pytest.mark.parametrize(
    ("dims", "size"), [(1, (50,)), (2, (37, 30)), (3, (19, 24, 21))],
)
@pytest.mark.parametrize("task", ["classification", "segmentation", "joint"])
def test_task_shapes_odd_sizes(dims, size, task):
    torch.manual_seed(0)
    model = create_model(SMALL, spatial_dims=dims, in_channels=2, num_classes=3, task=task).eval()
    x = torch.randn(2, 2, *size)
    with torch.no_grad():
        out = model(x)
    if task == "classification":
        assert out.shape == (2, 3)
    elif task == "segmentation":
        assert out.shape == (2, 3, *size)
    else:
        seg, cls = out
        assert seg.shape == (2, 3, *size) and cls.shape == (2, 3)


def test_joint_aux_classes_and_v1_3d_training_step():
    model = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=2, task="joint",
                         aux_classes=4)
    seg, cls = model(torch.randn(2, 1, 32, 32, 32))
    assert seg.shape == (2, 2, 32, 32, 32) and cls.shape == (2, 4)
    (seg.mean() + cls.mean()).backward()
    assert model.encoder.conv_stem.weight.grad is not None and model.cls_head.fc.weight.grad is not None


def test_two_and_a_half_d_is_slices_as_channels():
    model = create_model(SMALL, spatial_dims=2, in_channels=5, num_classes=2).eval()
    assert model.conv_stem.weight.shape[1] == 5
    assert model(torch.randn(1, 5, 32, 32)).shape == (1, 2)


def test_spacing_gives_anisotropic_strides_and_kernels():
    model = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=2, task="segmentation",
                         spacing=(5.0, 0.7, 0.7))
    assert model.encoder.conv_stem.stride == (1, 2, 2)
    assert model.encoder.conv_stem.kernel_size == (1, 3, 3)
    assert model.encoder.blocks[0][0].conv_dw.kernel_size == (1, 3, 3)
    assert model.encoder.blocks[1][0].conv_dw.kernel_size == (3, 3, 3)
    assert model.encoder.feature_info.reduction() == [(1, 2, 2), (1, 4, 4), (2, 8, 8), (4, 16, 16), (8, 32, 32)]
    # decoder: kernel 1 along z at the levels where z is coarse (skip level 0 and full resolution)
    assert model.decoder.blocks[-2].conv1.conv.kernel_size == (1, 3, 3)
    assert model.decoder.blocks[-1].conv2.conv.kernel_size == (1, 3, 3)
    assert model.decoder.blocks[-3].conv1.conv.kernel_size == (3, 3, 3)
    x = torch.randn(1, 1, 12, 40, 36)
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 2, 12, 40, 36)


def test_explicit_strides_and_kernels():
    strides = [(1, 2, 2), (1, 2, 2), (1, 2, 2), 2, 2]
    kernels = [(1, None, None), (1, None, None), None, None, None]
    enc = create_model(SMALL, spatial_dims=3, in_channels=1, features_only=True, strides=strides, kernels=kernels)
    assert enc.feature_info.reduction() == [(1, 2, 2), (1, 4, 4), (1, 8, 8), (2, 16, 16), (4, 32, 32)]
    assert enc.blocks[1][0].conv_exp.kernel_size == (1, 3, 3) and enc.blocks[1][0].conv_exp.stride == (1, 2, 2)
    feats = enc(torch.randn(1, 1, 8, 64, 64))
    assert [tuple(f.shape[2:]) for f in feats] == [(8, 32, 32), (8, 16, 16), (8, 8, 8), (4, 4, 4), (2, 2, 2)]
    with pytest.raises(ValueError, match="one entry per resolution level"):
        create_model(SMALL, spatial_dims=3, strides=[2, 2])
    with pytest.raises(ValueError, match="kernels"):
        create_model(SMALL, spatial_dims=3, kernels=[(1, 3), None, None, None, None])


def test_deep_supervision_train_and_eval():
    model = create_model(SMALL, spatial_dims=3, in_channels=1, num_classes=2, task="segmentation",
                         deep_supervision=True, deep_supervision_levels=3)
    x = torch.randn(1, 1, 33, 32, 30)
    outs = model.train()(x)
    assert [tuple(o.shape) for o in outs] == [(1, 2, 33, 32, 30), (1, 2, 17, 16, 15), (1, 2, 9, 8, 8)]
    sum(o.mean() for o in outs).backward()
    assert all(h.conv.weight.grad is not None for h in model.ds_heads)
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 2, 33, 32, 30)


def test_decoder_sized_from_feature_info_and_channels_validated():
    model = create_model("efficientnet_b3", spatial_dims=2, num_classes=1, task="segmentation",
                         decoder_channels=(64, 48, 32, 16, 8))
    enc_ch = model.encoder.feature_info.channels()
    assert model.decoder.blocks[0].conv1.conv.in_channels == enc_ch[-1] + enc_ch[-2]
    assert model.decoder.blocks[-1].conv1.conv.in_channels == 16  # full-resolution level: no skip
    default3d = create_model(SMALL, spatial_dims=3, num_classes=1, task="segmentation")
    assert default3d.decoder.out_channels == [128, 64, 32, 16, 8]
    with pytest.raises(ValueError, match="decoder_channels needs 5 entries"):
        create_model(SMALL, num_classes=1, task="segmentation", decoder_channels=(32, 16))


@pytest.mark.parametrize("norm", ["batch", "instance", ("group", {"num_groups": 8}), ["group", {"num_groups": 4}]])
def test_norms(norm):
    model = create_model(SMALL, spatial_dims=3, in_channels=1, num_classes=2, task="segmentation", norm=norm)
    kinds = {type(m).__name__ for m in model.modules()}
    expected = {"batch": "BatchNorm3d", "instance": "InstanceNorm3d"}.get(norm if isinstance(norm, str) else "",
                                                                           "GroupNorm")
    assert expected in kinds
    assert model(torch.randn(2, 1, 16, 16, 64)).shape == (2, 2, 16, 16, 64)  # deepest level: 1x1x2


def test_batchnorm_defaults_like_tf():
    model = create_model(SMALL)
    assert model.bn1.eps == 1e-3 and model.bn1.momentum == 0.1


def test_checkpointing_same_output_and_grads():
    torch.manual_seed(0)
    plain = create_model(SMALL, spatial_dims=3, in_channels=1, num_classes=2, task="joint", drop_path_rate=0.1,
                         aux_dropout=0.0)
    ckpt = create_model(SMALL, spatial_dims=3, in_channels=1, num_classes=2, task="joint", drop_path_rate=0.1,
                        aux_dropout=0.0, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 16, 16, 16)
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # same drop-path draws
        seg, cls = model.train()(x)
        (seg.square().mean() + cls.square().mean()).backward()
        grads.append((seg.detach(), cls.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    for a, b in zip(grads[0][2], grads[1][2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_memory_efficient_silu_matches_torch():
    from medeff.layers import SiLUFunction

    x = torch.randn(1000, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(SiLUFunction.apply, (x[:20].detach().requires_grad_(),))
    y = SiLUFunction.apply(x)
    g = torch.randn_like(x)
    (gx,) = torch.autograd.grad(y, x, g)
    x2 = x.detach().requires_grad_()
    (gx2,) = torch.autograd.grad(torch.nn.functional.silu(x2), x2, g)
    torch.testing.assert_close(y, torch.nn.functional.silu(x.detach()))
    torch.testing.assert_close(gx, gx2)
    model = create_model(SMALL, num_classes=2, memory_efficient=True)
    assert any(type(m).__name__ == "MemoryEfficientSiLU" for m in model.modules())
    assert not any(isinstance(m, torch.nn.SiLU) for m in model.modules())


def test_drop_path_linear_schedule():
    rate = 0.3
    model = create_model("efficientnet_b0", drop_path_rate=rate)
    blocks = [b for stage in model.blocks for b in stage]
    n = len(blocks)
    for i, block in enumerate(blocks):
        if block.has_skip and i > 0:
            assert isinstance(block.drop_path, DropPath)
            assert block.drop_path.rate == pytest.approx(rate * i / n)
        else:
            assert not isinstance(block.drop_path, DropPath)


def test_drop_path_drops_whole_samples_in_training_only():
    torch.manual_seed(0)
    layer = DropPath(0.5)
    x = torch.ones(64, 4, 3, 3)
    y = layer.train()(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == 0).all(1).any() and (per_sample == 2).all(1).any()
    assert torch.equal(layer.eval()(x), x)


def test_decoder_channels_last_same_outputs_and_grads():
    torch.manual_seed(0)
    # polyphase off: the hook below watches the first conv's input, which the polyphase path never builds
    kw = dict(spatial_dims=3, in_channels=1, num_classes=3, task="segmentation", deep_supervision=True,
              decoder_polyphase=False)
    plain = create_model(SMALL, decoder_channels_last=False, **kw).double()  # float64: no rounding noise
    auto = create_model(SMALL, **kw).double()  # default "auto": channels_last_3d on CPU
    auto.load_state_dict(plain.state_dict())
    seen = []
    hook = auto.decoder.blocks[-1].conv1.conv.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    x = torch.randn(2, 1, 16, 24, 16, dtype=torch.float64)
    results = []
    for model in (plain, auto):
        torch.manual_seed(1)  # same drop-path draws
        outs = model.train()(x)
        sum(o.square().mean() for o in outs).backward()
        results.append((outs, [p.grad.clone() for p in model.parameters()]))
    hook.remove()
    assert seen[0].is_contiguous(memory_format=torch.channels_last_3d) and not seen[0].is_contiguous()
    for a, b in zip(results[0][0], results[1][0]):
        assert b.is_contiguous()  # logits come back in the default layout
        torch.testing.assert_close(a, b)  # same maths, another summation order
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


def test_decoder_channels_last_value_checked():
    with pytest.raises(ValueError, match="'yes'"):
        create_model(SMALL, spatial_dims=3, in_channels=1, num_classes=2, task="segmentation",
                     decoder_channels_last="yes")


def test_channels_last_3d_runs_and_matches():
    torch.manual_seed(0)
    ref = create_model(SMALL, spatial_dims=3, in_channels=1, num_classes=2, task="segmentation").eval()
    cl = create_model(SMALL, spatial_dims=3, in_channels=1, num_classes=2, task="segmentation",
                      channels_last=True).eval()
    cl.load_state_dict(ref.state_dict())
    assert cl.encoder.conv_stem.weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = torch.randn(1, 1, 16, 24, 16)
    with torch.no_grad():
        torch.testing.assert_close(cl(x), ref(x), rtol=1e-4, atol=1e-4)
    # converting model and input by hand works as well
    manual = ref.to(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        out = manual(x.contiguous(memory_format=torch.channels_last_3d))
    assert out.shape == (1, 2, 16, 24, 16)


@pytest.mark.parametrize("spatial_dims,in_channels,size", [(2, 3, (32, 40)), (3, 1, (32, 40, 32))])
def test_auto_layout_runs_channels_last_on_cpu_with_the_same_results(spatial_dims, in_channels, size):
    # a one-channel input is contiguous in both layouts: the stem's output is what must come out channels-last
    fmt = {2: torch.channels_last, 3: torch.channels_last_3d}[spatial_dims]
    torch.manual_seed(0)
    kw = dict(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=4)
    plain = create_model(SMALL, channels_last=False, **kw).double()
    auto = create_model(SMALL, **kw).double()  # default "auto"
    auto.load_state_dict(plain.state_dict())
    assert auto.channels_last == "auto" and auto.conv_stem.weight.is_contiguous()  # weights keep their layout
    seen = []
    hook = auto.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    x = torch.randn(2, in_channels, *size, dtype=torch.float64)
    results = []
    for model in (plain, auto):
        torch.manual_seed(1)  # same drop-path draws
        out = model.train()(x)
        out.square().mean().backward()
        results.append((out, [p.grad.clone() for p in model.parameters()]))
    hook.remove()
    assert seen[0].is_contiguous(memory_format=fmt) and not seen[0].is_contiguous()
    torch.testing.assert_close(results[0][0], results[1][0])  # float64: only the summation order differs
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)
    # tracing (and export) keeps the input's layout
    seen.clear()
    hook = auto.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    torch.jit.trace(auto.eval(), x[:1], check_trace=False)  # the check would rerun it eagerly
    hook.remove()
    assert seen and all(t.is_contiguous() for t in seen)
    with pytest.raises(ValueError, match="'yes'"):
        create_model(SMALL, channels_last="yes", **kw)


def test_same_tf_padding_runs_on_odd_sizes():
    model = create_model(SMALL, spatial_dims=3, in_channels=1, num_classes=2, padding="same_tf").eval()
    assert model(torch.randn(1, 1, 17, 19, 23)).shape == (1, 2)


def test_phi_variants():
    a = create_model("efficientnet_phi2.5", num_classes=10)
    b = create_model("efficientnet_phi", phi=2.5, num_classes=10)
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    with torch.device("meta"):
        lo = sum(p.numel() for p in create_model("efficientnet_phi2", num_classes=10).parameters())
        hi = sum(p.numel() for p in create_model("efficientnet_phi3", num_classes=10).parameters())
    assert lo < sum(p.numel() for p in a.parameters()) < hi
    with pytest.raises(ConfigError, match="phi"):
        create_model("efficientnet_phi")


def test_unknown_name_did_you_mean():
    with pytest.raises(ConfigError) as exc:
        create_model("efficientnet-b0")
    msg = str(exc.value)
    assert "did you mean 'efficientnet_b0'" in msg and "efficientnetv2_s" in msg


def test_unknown_option_and_task():
    with pytest.raises(ConfigError, match="did you mean 'drop_path_rate'"):
        create_model(SMALL, drop_path_rat=0.1)
    with pytest.raises(ConfigError, match="did you mean 'segmentation'"):
        create_model(SMALL, task="segmentaton")
    with pytest.raises(ConfigError, match="decoder_channels"):
        create_model(SMALL, decoder_channels=(8,))  # a U-Net option on a classifier
    with pytest.raises(ConfigError, match="norm"):
        create_model(SMALL, norm="batchnorm")
    with pytest.raises(ValueError, match="spatial_dims"):
        create_model(SMALL, spatial_dims=4)


def test_list_models_pattern_and_types():
    assert list_models("efficientnetv2_b*") == [f"efficientnetv2_b{i}" for i in range(4)]
    assert len(list_models()) == 20
    assert list_models("efficientnet_lite*") == [f"efficientnet_lite{i}" for i in range(5)]
    assert isinstance(create_model(SMALL, task="segmentation", num_classes=2), EfficientNetUNet)
    assert isinstance(create_model(SMALL), EfficientNet)
    enc = create_model(SMALL, features_only=True, out_indices=(0, 3))
    assert enc.feature_info.module_names() == ["act1", "blocks.2"]
    assert [f.shape[1] for f in enc(torch.randn(1, 3, 32, 32))] == enc.feature_info.channels()
