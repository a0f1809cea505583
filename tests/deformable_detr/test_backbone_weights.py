"""Backbone checkpoints of the official Swin release, timm's Swin and timm / MAE ViTs,
generated with their real key layout, convert into detectron2's names and load
into the configs' models: every converted key fills a parameter, and the
backbone keys left unfilled are only those detection adds."""

import re

import pytest
import torch

from deformable_detr.checkpoint.backbone_weights import (
    backbone_keys_without_pretraining,
    check_fits,
    convert_backbone_state_dict,
)

from ..scripts import load_script
from .backbone_configs import shrunk_model

convert_tool = load_script("tools/convert_backbone_checkpoint.py")


def official_swin_state_dict(model):
    """The official Swin release's checkpoint of the model's backbone: detectron2's
    names without the per-level output norms, with the final norm, the ImageNet
    head and the shifted blocks' attention masks."""
    state = {
        k.removeprefix("backbone."): torch.randn_like(v) if v.is_floating_point() else v
        for k, v in model.backbone.state_dict().items()
        if not re.fullmatch(r"norm\d+\..*", k)
    }
    channels = model.backbone.num_features[-1]
    state.update({"norm.weight": torch.randn(channels), "norm.bias": torch.randn(channels)})
    state.update({"head.weight": torch.randn(1000, channels), "head.bias": torch.randn(1000)})
    state["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)
    return {"model": state}


def timm_vit_state_dict(model):
    """timm's VisionTransformer (MAE's layout) as wide as the model's ViT, random weights."""
    from timm.models.vision_transformer import VisionTransformer

    net = model.backbone.net
    vit = VisionTransformer(
        img_size=224,
        patch_size=16,
        embed_dim=net.pos_embed.shape[-1],
        depth=len(net.blocks),
        num_heads=net.blocks[0].attn.num_heads,
        qkv_bias=True,
    )
    return vit.state_dict()


def timm_swin(model, image_size):
    """timm's SwinTransformer as wide and deep as the model's Swin, random weights."""
    from timm.models.swin_transformer import SwinTransformer

    swin = model.backbone
    return SwinTransformer(
        img_size=image_size,
        embed_dim=swin.embed_dim,
        depths=[len(layer.blocks) for layer in swin.layers],
        num_heads=[layer.blocks[0].attn.num_heads for layer in swin.layers],
        window_size=swin.layers[0].window_size,
    ).eval()


def _load_strictly(model, converted, source):
    check_fits(model, converted, source)
    result = model.load_state_dict(converted, strict=False)
    assert result.unexpected_keys == []
    new = set(backbone_keys_without_pretraining(model, source))
    assert {k for k in result.missing_keys if k.startswith("backbone.")} == new
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in converted.items())


@pytest.mark.parametrize("backbone", ["swin_t", "swin_l"])
def test_official_swin_checkpoint_loads(backbone):
    model, _ = shrunk_model(backbone)
    converted, dropped = convert_backbone_state_dict(official_swin_state_dict(model), "swin")
    assert sorted(dropped) == sorted(
        ["norm.weight", "norm.bias", "head.weight", "head.bias", "layers.0.blocks.1.attn_mask"]
    )
    _load_strictly(model, converted, "swin")
    assert backbone_keys_without_pretraining(model, "swin")  # the output norms


def test_timm_swin_checkpoint_computes_what_timm_computes():
    """timm merges patches at the start of a stage and detectron2 at the end of the
    one before: after conversion, detectron2's Swin gives timm's stage outputs (under
    detectron2's own output norms). At 448 pixels every stage is larger than a window:
    timm stops shifting windows in a stage no larger than one, detectron2 never does."""
    model, _ = shrunk_model("swin_t")
    timm_model = timm_swin(model, image_size=448)
    state = timm_model.state_dict()
    assert "layers.1.downsample.reduction.weight" in state  # timm's layout
    assert "layers.0.downsample.reduction.weight" not in state
    converted, dropped = convert_backbone_state_dict(state, "timm_swin")
    assert set(dropped) == {"norm.weight", "norm.bias", "head.fc.weight", "head.fc.bias"}
    assert "backbone.layers.0.downsample.reduction.weight" in converted
    _load_strictly(model, converted, "timm_swin")

    backbone = model.backbone.eval()
    for i in backbone.out_indices:  # output norms that are not the identity
        norm = getattr(backbone, f"norm{i}")
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    image = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        ours = backbone(image)
        theirs = timm_model.forward_intermediates(
            image, indices=list(backbone.out_indices), norm=False, intermediates_only=True
        )
    for i, expected in zip(backbone.out_indices, theirs):
        norm = getattr(backbone, f"norm{i}")
        expected = norm(expected.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(ours[f"p{i}"], expected, atol=1e-4, rtol=1e-4)


def test_timm_and_mae_vit_checkpoint_loads():
    model, _ = shrunk_model("vit_b")
    converted, dropped = convert_backbone_state_dict(timm_vit_state_dict(model), "vit")
    assert set(dropped) == {"cls_token", "norm.weight", "norm.bias", "head.weight", "head.bias"}
    assert converted["backbone.net.pos_embed"].shape[1] == 197  # 14x14 patches + class token
    _load_strictly(model, converted, "vit")


def test_layout_errors_name_the_key():
    model, _ = shrunk_model("vit_b")
    state = timm_vit_state_dict(model)
    with pytest.raises(ValueError, match="key 'cls_token' is not a swin backbone key"):
        convert_backbone_state_dict(state, "swin")
    with pytest.raises(ValueError, match="source='beit'"):
        convert_backbone_state_dict(state, "beit")
    converted, _ = convert_backbone_state_dict(state, "vit")
    converted["backbone.net.pos_embed"] = torch.zeros(1, 50, 96)
    with pytest.raises(ValueError, match=r"backbone.net.pos_embed: checkpoint shape \(1, 50, 96\)"):
        check_fits(model, converted, "vit")
    del converted["backbone.net.pos_embed"]
    with pytest.raises(ValueError, match="does not fill: \\['backbone.net.pos_embed'\\]"):
        check_fits(model, converted, "vit")


def test_tool_writes_a_checkpoint_the_trainer_loads(tmp_path, capsys):
    from detectron2.checkpoint import DetectionCheckpointer

    model, _ = shrunk_model("swin_t")
    source = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save(official_swin_state_dict(model), source)
    output = tmp_path / "swin_t_d2.pth"
    convert_tool.main(["--source", "swin", str(source), str(output)])
    assert f"to {output}; dropped 5" in capsys.readouterr().out
    fresh, _ = shrunk_model("swin_t")
    DetectionCheckpointer(fresh).load(str(output))
    expected = torch.load(output)["model"]
    state = fresh.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())

    with pytest.raises(SystemExit, match="not a vit backbone key"):
        convert_tool.main(["--source", "vit", str(source), str(tmp_path / "x.pth")])
