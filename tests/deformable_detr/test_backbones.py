"""Every backbone config (R-101, ResNeXt-101, ResNeXt-101-DCN, Swin-T/B/L, ViT-B)
in every variant: builds, trains a step on the CPU, feeds the paper's levels;
the deformable convolution on torchvision's op against plain convolutions; the
optimizer rules of Swin and ViT; export through TorchScript and ONNX."""

import json
import sys

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import instantiate
from detectron2.modeling.backbone import BottleneckBlock
from detectron2.solver import get_default_optimizer_params

from deformable_detr.backbones import TorchvisionDeformBottleneckBlock, TorchvisionDeformConv

from ..scripts import run_command
from .backbone_configs import BACKBONES, VARIANTS, shrunk_model
from .tiny_model import detection_batch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ------------------------------------------------------------------ deformable convolution
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("modulated", [False, True])
def test_deform_conv_with_zero_offsets_is_a_convolution(device, modulated):
    """Zero offsets (and a mask of ones): forward and both gradients of a plain
    grouped, strided, dilated convolution."""
    conv = TorchvisionDeformConv(16, 32, 3, stride=2, padding=2, dilation=2, groups=4).to(device)
    x = torch.randn(2, 16, 13, 17, device=device, requires_grad=True)
    out_h, out_w = 7, 9
    offset = torch.zeros(2, 18, out_h, out_w, device=device)
    mask = torch.ones(2, 9, out_h, out_w, device=device) if modulated else None
    got = conv(x, offset, mask)
    expected = F.conv2d(x, conv.weight, stride=2, padding=2, dilation=2, groups=4)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(got)
    got_dx, got_dw = torch.autograd.grad(got, (x, conv.weight), grad)
    expected_dx, expected_dw = torch.autograd.grad(expected, (x, conv.weight), grad)
    torch.testing.assert_close(got_dx, expected_dx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_dw, expected_dw, rtol=1e-4, atol=1e-3)


def test_deform_conv_offsets_are_dy_dx_pairs():
    """An offset of (0, +1) at every kernel position samples one pixel to the
    right: the convolution of the input shifted left (zero at the border)."""
    conv = TorchvisionDeformConv(4, 6, 3, padding=1)
    x = torch.randn(1, 4, 9, 11)
    offset = torch.zeros(1, 18, 9, 11)
    offset[:, 1::2] = 1.0  # dx
    padded = F.pad(x, (1, 1, 1, 1))
    shifted = F.pad(padded[..., 1:], (0, 1))
    torch.testing.assert_close(
        conv(x, offset), F.conv2d(shifted, conv.weight), rtol=1e-4, atol=1e-4
    )


def test_deform_block_starts_as_its_plain_bottleneck():
    """detectron2's DeformBottleneckBlock with zero-initialized offsets computes
    the BottleneckBlock of the same weights (ResNeXt groups, stride 2)."""
    kwargs = dict(bottleneck_channels=32, stride=2, num_groups=4, norm="FrozenBN")
    deform = TorchvisionDeformBottleneckBlock(64, 128, **kwargs)
    plain = BottleneckBlock(64, 128, **kwargs)
    state = {k: v for k, v in deform.state_dict().items() if "conv2_offset" not in k}
    plain.load_state_dict(state)  # same names, strictly
    x = torch.randn(2, 64, 15, 20)
    torch.testing.assert_close(deform(x), plain(x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ every config
@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.strip("_") or "multi_scale")
@pytest.mark.parametrize("backbone", BACKBONES)
def test_config_trains_a_step_on_the_paper_levels(backbone, variant):
    """The config's model (shrunk): the levels at strides 8, 16, 32 (32 alone
    single-scale), finite losses on a padded batch of two sizes, a gradient for
    every trainable backbone parameter, none for the frozen ones."""
    model, cfg = shrunk_model(backbone, variant)
    shapes = model.backbone.output_shape()
    strides = [shapes[f].stride for f in model.in_features]
    assert strides == ([32] if variant == "_single_scale" else [8, 16, 32])
    model.train()
    losses = model(detection_batch([(96, 128), (80, 112)], num_classes=80))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for name, param in model.backbone.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
        else:
            assert param.grad is None, name
    if backbone.startswith(("r", "x")):  # frozen BN, stem and res2 frozen as for R-50
        assert not any(p.requires_grad for p in model.backbone.stem.parameters())
        assert not any(p.requires_grad for p in model.backbone.res2.parameters())
    if backbone == "x101_dcn":
        offsets = [m.conv2_offset for m in model.backbone.modules() if hasattr(m, "conv2_offset")]
        assert len(offsets) == 4 + 6 + 3  # res3-res5 of the shrunk (50-layer) model
        assert all(o.weight.grad.abs().sum() > 0 for o in offsets)


# ------------------------------------------------------------------ optimizer rules
def _hyperparameters(cfg, model):
    cfg.optimizer.params.model = model
    return _by_name(instantiate(cfg.optimizer).param_groups, model)


def _by_name(param_groups, model):
    """{name: (lr, weight decay)} of the model's trainable parameters."""
    by_param = {}
    for group in param_groups:
        for param in group["params"]:
            by_param[param] = (group["lr"], group["weight_decay"])
    return {name: by_param[p] for name, p in model.named_parameters() if p.requires_grad}


def test_swin_has_no_decay_on_its_norms_and_position_tables():
    model, cfg = shrunk_model("swin_t")
    hp = _hyperparameters(cfg, model)
    for name, (lr, weight_decay) in hp.items():
        if name.startswith("backbone."):
            assert lr == pytest.approx(2e-5), name
            no_decay = ".norm" in name or "relative_position_bias_table" in name
            assert weight_decay == (0.0 if no_decay else 1e-4), name
    assert hp["backbone.layers.0.blocks.0.attn.relative_position_bias_table"][1] == 0.0
    assert hp["backbone.layers.0.blocks.0.attn.qkv.weight"][1] == 1e-4
    # the detector keeps the paper's decay everywhere, norms included
    assert hp["transformer.encoder.layers.0.norm.weight"] == (2e-4, 1e-4)
    assert hp["input_proj.0.1.weight"] == (2e-4, 1e-4)


def test_vit_lr_decays_layer_by_layer():
    model, cfg = shrunk_model("vit_b")
    hp = _hyperparameters(cfg, model)
    lr = 1e-4
    assert hp["backbone.net.pos_embed"] == (pytest.approx(lr * 0.7**13), 0.0)
    assert hp["backbone.net.patch_embed.proj.weight"][0] == pytest.approx(lr * 0.7**13)
    for block in range(12):
        assert hp[f"backbone.net.blocks.{block}.attn.qkv.weight"] == (
            pytest.approx(lr * 0.7 ** (12 - block)),
            1e-4,
        )
        assert hp[f"backbone.net.blocks.{block}.norm1.weight"][1] == 0.0
    assert hp["backbone.net.blocks.2.attn.rel_pos_h"][1] == 0.0
    # the simple feature pyramid is new: full lr
    pyramid = [n for n in hp if n.startswith("backbone.simfp_")]
    assert pyramid and all(hp[n][0] == pytest.approx(lr) for n in pyramid)
    sampling = [n for n in hp if "sampling_offsets" in n]
    assert sampling and all(hp[n] == (pytest.approx(lr * 0.1), 1e-4) for n in sampling)


# ------------------------------------------------------------------ export
def _export_parity(fmt, *backbones):
    stdout = run_command(
        [sys.executable, "-m", "tests.deformable_detr.backbone_export_parity", fmt, *backbones],
        timeout=900,
    )
    return json.loads(stdout.strip().splitlines()[-1])


def _assert_parity(runs, where):
    for run in runs:
        assert "error" not in run, f"{where}: {run}"
        assert run["count"] == run["eager_count"] > 0 and run["classes_equal"], where
        assert run["boxes"] <= 1e-4 and run["scores"] <= 1e-4, f"{where}: {run}"


@pytest.mark.slow
def test_torchscript_export():
    """ResNeXt-101-DCN (torchvision's deform_conv2d traces) matches the eager
    model at the export size and at others. detectron2's Swin and ViT compute
    window partitions, attention masks and relative-position tables from the
    image size in Python, which tracing freezes: their artefacts match at the
    export size and fail at a larger one (Swin at any other)."""
    results = _export_parity("torchscript", "x101_dcn", "swin_t", "vit_b")
    _assert_parity(results["x101_dcn"]["runs"], "torchscript x101_dcn")
    for backbone in ("swin_t", "vit_b"):
        at_export_size, smaller, larger = results[backbone]["runs"]
        _assert_parity([at_export_size], f"torchscript {backbone} at the export size")
        assert "RuntimeError" in larger.get("error", ""), larger
    assert "RuntimeError" in results["swin_t"]["runs"][1].get("error", "")


@pytest.mark.slow
def test_dcn_backbone_onnx_export():
    """torchvision's deform_conv2d exports as ONNX DeformConv (opset 19,
    d2ext.onnx.OPSET), which onnxruntime runs: ResNeXt-101-DCN's ONNX graph matches
    the eager model at the export size and at others."""
    results = _export_parity("onnx", "x101_dcn")["x101_dcn"]
    assert results["export_error"] is None, results["export_error"]
    _assert_parity(results["runs"], "onnx x101_dcn")


@pytest.mark.slow
def test_swin_and_vit_onnx_hold_at_the_export_size_only():
    """Like their TorchScript: detectron2's Swin and ViT compute window partitions
    and position tables from the image size in Python, which the export fixes.
    Their ONNX graphs match the eager model at the export size; at other sizes
    onnxruntime refuses them (ViT's graph takes only the export size, Swin's fails
    in a Reshape)."""
    results = _export_parity("onnx", "swin_t", "vit_b")
    for backbone in ("swin_t", "vit_b"):
        assert results[backbone]["export_error"] is None, results[backbone]["export_error"]
        at_export_size, *other_sizes = results[backbone]["runs"]
        _assert_parity([at_export_size], f"onnx {backbone} at the export size")
        assert other_sizes and all(
            "ONNXRuntimeError" in run.get("error", "") for run in other_sizes
        )


def test_resnext_stages_are_detectron2s():
    """make_resnet_stages(101, 32x8d) builds the ResNeXt-101 of detectron2's
    build_resnet_backbone: the same names and shapes, so its checkpoints load."""
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import BasicStem, ResNet, build_resnet_backbone

    from deformable_detr.backbones import make_resnet_stages

    cfg = get_cfg()
    cfg.MODEL.RESNETS.update(DEPTH=101, NUM_GROUPS=32, WIDTH_PER_GROUP=8, STRIDE_IN_1X1=False)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    expected = build_resnet_backbone(cfg, ShapeSpec(channels=3)).state_dict()
    ours = ResNet(
        BasicStem(3, 64, norm="FrozenBN"),
        make_resnet_stages(101, num_groups=32, width_per_group=8),
        out_features=["res3", "res4", "res5"],
    ).state_dict()
    assert ours.keys() == expected.keys()
    assert all(ours[k].shape == expected[k].shape for k in ours)
    with pytest.raises(ValueError, match="depth=34; expected one of"):
        make_resnet_stages(34)


@pytest.mark.parametrize("backbone", ["swin_t", "vit_b"])
def test_param_groups_differ_from_detectron2s_only_on_the_backbones_norms_and_tables(backbone):
    """The config's groups are detectron2's get_default_optimizer_params (same lr
    factors, no norm rule) but for weight decay 0 on the backbone's norms and position
    tables, which detectron2's weight_decay_norm and overrides cannot confine to it."""
    model, cfg = shrunk_model(backbone)
    ours = _hyperparameters(cfg, model)
    detectron2s = get_default_optimizer_params(
        model,
        base_lr=cfg.optimizer.lr,
        weight_decay=cfg.optimizer.weight_decay,
        lr_factor_func=instantiate(cfg.optimizer.params.lr_factor_func),
    )
    theirs = _by_name(detectron2s, model)
    assert ours.keys() == theirs.keys()
    no_decay = {name for name in ours if ours[name] != theirs[name]}
    assert no_decay and all(name.startswith("backbone.") for name in no_decay)
    assert all(ours[n] == (theirs[n][0], 0.0) for n in no_decay)
    norms = {
        f"{module_name}.{param_name}"
        for module_name, module in model.backbone.named_modules(prefix="backbone")
        for param_name, p in module.named_parameters(recurse=False)
        if p.requires_grad and "norm" in type(module).__name__.lower()
    }
    assert norms and norms <= no_decay
