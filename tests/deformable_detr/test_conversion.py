"""Weight conversion from the official Deformable-DETR release and from HF
transformers: every key placed where it belongs, variants and classes checked,
the tools end to end. Nothing is downloaded: the official state_dicts are built
here with the official key names and shapes (torchvision's ResNet-50 for the
backbone), the HF ones come from a randomly initialised transformers model."""

import argparse
from pathlib import Path

import pytest
import torch
import torchvision

from deformable_detr.checkpoint import converter
from deformable_detr.checkpoint.hf_peer import build_hf_peer
from deformable_detr.checkpoint.state_dicts import (
    Variant,
    coco_raw_class_ids,
    convert_hf_state_dict,
    convert_official_state_dict,
    load_conversion,
)

from ..scripts import ROOT, load_script
from .tiny_model import PAPER_SIZES, VARIANTS, build_model, build_model_and_hf_peer

TINY = dict(hidden_dim=64, ffn=64, heads=4, layers=2, points=4, queries=10)
COCO = dict(hidden_dim=256, ffn=1024, heads=8, layers=6, points=4, queries=300)


def official_state_dict(
    variant, num_classes=91, hidden_dim=64, ffn=64, heads=4, layers=2, points=4, queries=10, seed=0
):
    """A state_dict with the official release's keys and shapes (models/deformable_detr.py,
    deformable_transformer.py, backbone.py) and random values."""
    v = VARIANTS[variant]
    levels, refine, two_stage = v["num_feature_levels"], v["with_box_refine"], v["two_stage"]
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    sd = {}
    torch.manual_seed(seed)
    for key, value in torchvision.models.resnet50().state_dict().items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue  # IntermediateLayerGetter drops fc; FrozenBatchNorm2d has no counter
        if value.dim() == 1:  # BatchNorm: random statistics at a scale that keeps 50 layers finite
            value = (
                value + 0.1 * rand(*value.shape).abs()
                if key.endswith("running_var")
                else value + 0.1 * rand(*value.shape)
            )
        sd[f"backbone.0.body.{key}"] = value

    def linear(prefix, out_features, in_features):
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = (
            rand(out_features, in_features),
            rand(out_features),
        )

    def norm(prefix, channels):
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = rand(channels), rand(channels)

    def msda(prefix):
        linear(f"{prefix}.sampling_offsets", heads * levels * points * 2, hidden_dim)
        linear(f"{prefix}.attention_weights", heads * levels * points, hidden_dim)
        linear(f"{prefix}.value_proj", hidden_dim, hidden_dim)
        linear(f"{prefix}.output_proj", hidden_dim, hidden_dim)

    sd["transformer.level_embed"] = rand(levels, hidden_dim)
    for i in range(layers):
        p = f"transformer.encoder.layers.{i}"
        msda(f"{p}.self_attn")
        norm(f"{p}.norm1", hidden_dim)
        linear(f"{p}.linear1", ffn, hidden_dim)
        linear(f"{p}.linear2", hidden_dim, ffn)
        norm(f"{p}.norm2", hidden_dim)
    for i in range(layers):
        p = f"transformer.decoder.layers.{i}"
        msda(f"{p}.cross_attn")
        norm(f"{p}.norm1", hidden_dim)
        sd[f"{p}.self_attn.in_proj_weight"], sd[f"{p}.self_attn.in_proj_bias"] = (
            rand(3 * hidden_dim, hidden_dim),
            rand(3 * hidden_dim),
        )
        linear(f"{p}.self_attn.out_proj", hidden_dim, hidden_dim)
        norm(f"{p}.norm2", hidden_dim)
        linear(f"{p}.linear1", ffn, hidden_dim)
        linear(f"{p}.linear2", hidden_dim, ffn)
        norm(f"{p}.norm3", hidden_dim)
    if two_stage:
        linear("transformer.enc_output", hidden_dim, hidden_dim)
        norm("transformer.enc_output_norm", hidden_dim)
        linear("transformer.pos_trans", 2 * hidden_dim, 2 * hidden_dim)
        norm("transformer.pos_trans_norm", 2 * hidden_dim)
    else:
        linear("transformer.reference_points", 2, hidden_dim)
        sd["query_embed.weight"] = rand(queries, 2 * hidden_dim)
    channels = [2048] if levels == 1 else [512, 1024, 2048]
    for level in range(levels):
        kernel, in_channels = (
            (1, channels[level])
            if level < len(channels)
            else (3, channels[-1] if level == len(channels) else hidden_dim)
        )
        sd[f"input_proj.{level}.0.weight"], sd[f"input_proj.{level}.0.bias"] = (
            rand(hidden_dim, in_channels, kernel, kernel),
            rand(hidden_dim),
        )
        norm(f"input_proj.{level}.1", hidden_dim)
    num_pred = layers + (1 if two_stage else 0)
    heads_of = {}
    for i in range(num_pred if refine else 1):
        linear(f"class_embed.{i}", num_classes, hidden_dim)
        for j, (o, n) in enumerate(
            [(hidden_dim, hidden_dim), (hidden_dim, hidden_dim), (4, hidden_dim)]
        ):
            linear(f"bbox_embed.{i}.layers.{j}", o, n)
    for i in range(
        1, num_pred if not refine else 0
    ):  # shared heads: the same tensors under every index
        for key in [k for k in sd if k.startswith(("class_embed.0.", "bbox_embed.0."))]:
            sd[key.replace(".0.", f".{i}.", 1)] = sd[key]
    for key in [k for k in sd if k.startswith(("class_embed.", "bbox_embed."))]:
        if (refine and key.startswith("bbox_embed.")) or (
            two_stage and key.startswith("class_embed.")
        ):
            heads_of[f"transformer.decoder.{key}"] = sd[key]
    sd.update(heads_of)
    return sd


def _tiny_r50(variant, num_classes=91):
    return build_model(
        variant,
        num_classes=num_classes,
        depth=50,
        hidden_dim=64,
        num_queries=10,
        layers=2,
        ffn=64,
        heads=4,
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_official_state_dict_loads_strictly_into_every_variant(variant):
    source = official_state_dict(variant)
    conversion = convert_official_state_dict(source)
    v = VARIANTS[variant]
    assert conversion.variant == Variant(
        v["num_feature_levels"], v["with_box_refine"], v["two_stage"]
    )
    assert conversion.num_classes == 91 and conversion.unused == []
    assert len(conversion.repeats) == len(
        [k for k in source if k.startswith("transformer.decoder.") and "_embed." in k]
    )
    model = _tiny_r50(variant)
    load_conversion(model, conversion)
    ours = model.state_dict()
    # every converted tensor is one of the source's, unchanged
    source_values = {id(t) for t in source.values()}
    assert all(id(t) in source_values for t in conversion.state_dict.values())
    assert torch.equal(ours["transformer.level_embed"], source["transformer.level_embed"])


def test_official_keys_land_on_the_right_modules():
    source = official_state_dict("two_stage")
    model = _tiny_r50("two_stage")
    load_conversion(model, convert_official_state_dict(source))
    ours = model.state_dict()
    expected = {  # official -> ours, where the names differ in more than a prefix
        "transformer.encoder.layers.1.norm1.weight": "transformer.encoder.layers.1.norm.weight",
        "transformer.encoder.layers.1.norm2.bias": "transformer.encoder.layers.1.ffn.norm.bias",
        "transformer.encoder.layers.0.linear2.weight": (
            "transformer.encoder.layers.0.ffn.linear2.weight"
        ),
        # after cross-attn
        "transformer.decoder.layers.1.norm1.weight": "transformer.decoder.layers.1.norm2.weight",
        # after self-attn
        "transformer.decoder.layers.1.norm2.weight": "transformer.decoder.layers.1.norm1.weight",
        "transformer.decoder.layers.0.norm3.bias": "transformer.decoder.layers.0.ffn.norm.bias",
        "transformer.decoder.layers.0.self_attn.in_proj_weight": (
            "transformer.decoder.layers.0.self_attn.in_proj_weight"
        ),
        "transformer.pos_trans_norm.weight": "transformer.pos_trans_norm.weight",
        "backbone.0.body.conv1.weight": "backbone.stem.conv1.weight",
        "backbone.0.body.bn1.running_var": "backbone.stem.conv1.norm.running_var",
        "backbone.0.body.layer1.0.downsample.0.weight": "backbone.res2.0.shortcut.weight",
        "backbone.0.body.layer3.5.bn3.running_mean": "backbone.res4.5.conv3.norm.running_mean",
        "backbone.0.body.layer4.2.conv2.weight": "backbone.res5.2.conv2.weight",
        "class_embed.2.bias": "class_embed.2.bias",
    }
    for official, mine in expected.items():
        assert torch.equal(ours[mine], source[official]), f"{official} should load into {mine}"


def test_official_backbone_computes_torchvision_resnet50():
    """The backbone mapping, numerically: torchvision's ResNet-50 in eval mode
    (its BatchNorm then uses the running statistics) against ours after conversion."""
    source = official_state_dict("multi_scale")
    model = _tiny_r50("multi_scale").eval()
    load_conversion(model, convert_official_state_dict(source))
    resnet = torchvision.models.resnet50().eval()
    body = {
        k[len("backbone.0.body.") :]: v
        for k, v in source.items()
        if k.startswith("backbone.0.body.")
    }
    resnet.load_state_dict(body, strict=False)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model.backbone(x)
        y = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        for stage, name in zip(
            [resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4],
            ["res2", "res3", "res4", "res5"],
        ):
            y = stage(y)
            if name in ours:
                torch.testing.assert_close(
                    ours[name], y, rtol=1e-4, atol=1e-3 * y.abs().max().item()
                )


def test_official_variant_mismatch_is_refused():
    conversion = convert_official_state_dict(official_state_dict("box_refine"))
    with pytest.raises(
        ValueError, match="box refinement on.*config builds 4-level, box refinement off"
    ):
        load_conversion(_tiny_r50("multi_scale"), conversion)
    conversion = convert_official_state_dict(official_state_dict("single_scale"))
    with pytest.raises(ValueError, match="single-scale"):
        load_conversion(_tiny_r50("multi_scale"), conversion)


def test_official_missing_unused_and_inconsistent_keys_are_reported():
    source = official_state_dict("box_refine")
    source["transformer.some_extra.weight"] = torch.zeros(3)
    del source["transformer.decoder.layers.1.norm3.weight"]
    conversion = convert_official_state_dict(source)
    assert conversion.unused == ["transformer.some_extra.weight"]
    with pytest.raises(
        ValueError,
        match=(
            r"1 model keys not in the checkpoint: "
            r"transformer\.decoder\.layers\.1\.ffn\.norm\.weight"
        ),
    ):
        load_conversion(_tiny_r50("box_refine"), conversion)

    source = official_state_dict("box_refine")
    source["transformer.decoder.bbox_embed.1.layers.0.bias"] = (
        source["bbox_embed.1.layers.0.bias"] + 1
    )
    with pytest.raises(
        ValueError, match="should repeat the tensor converted to 'bbox_embed.1.layers.0.bias'"
    ):
        convert_official_state_dict(source)

    with pytest.raises(ValueError, match="not a Deformable DETR checkpoint"):
        convert_official_state_dict({"backbone.0.body.conv1.weight": torch.zeros(1)})


def test_coco_class_map_selects_the_raw_id_rows():
    ids = coco_raw_class_ids()
    assert (
        len(ids) == 80 and ids[:3] == [1, 2, 3] and ids[-1] == 90 and 12 not in ids
    )  # 12 is a gap
    source = official_state_dict("two_stage")
    conversion = convert_official_state_dict(source)
    conversion.select_classes(ids)
    model = _tiny_r50("two_stage", num_classes=80)
    load_conversion(model, conversion)
    ours = model.state_dict()
    for i in range(2):  # decoder heads: rows of the raw ids
        assert torch.equal(ours[f"class_embed.{i}.weight"], source[f"class_embed.{i}.weight"][ids])
        assert torch.equal(ours[f"class_embed.{i}.bias"], source[f"class_embed.{i}.bias"][ids])
    # the encoder head's objectness logit is row 0 of the official head
    assert torch.equal(ours["class_embed.2.weight"][0], source["class_embed.2.weight"][0])
    with pytest.raises(ValueError, match="has 80 classes and the config 91"):
        load_conversion(_tiny_r50("two_stage"), conversion)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hf_saved_weights_convert_for_every_variant(variant, tmp_path):
    """save_pretrained keeps one copy of tied heads; the converter fills the others."""
    ours, hf = build_model_and_hf_peer(variant)
    hf.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "model.safetensors"))
    conversion = convert_hf_state_dict(saved)
    assert conversion.unused == []
    if variant != "two_stage":  # two-stage saves the decoder's copies of every head
        assert conversion.filled and all(
            k.startswith("class_embed.") or not ours.with_box_refine for k in conversion.filled
        )
    load_conversion(ours, conversion)
    hf_heads = dict(hf.named_parameters(remove_duplicate=False))
    for key, value in ours.state_dict().items():
        if key.startswith(("class_embed.", "bbox_embed.")):
            assert torch.equal(value, hf_heads[key]), key


def test_hf_variant_mismatch_is_refused():
    _, hf = build_model_and_hf_peer("box_refine")
    with pytest.raises(ValueError, match="box refinement on"):
        load_conversion(
            build_model_and_hf_peer("multi_scale")[0], convert_hf_state_dict(hf.state_dict())
        )


def test_convert_official_tool_on_the_coco_config(tmp_path, capsys):
    """The tool end to end with the paper's multi-scale config: a 91-class official
    checkpoint file (with its argparse args) becomes an 80-class detectron2 checkpoint."""
    from deformable_detr.config.build import build_model as build_configured_model
    from deformable_detr.config.build import load_config

    tool = load_script("tools/convert_official_checkpoint.py")
    config = str(ROOT / "configs/COCO/deformable_detr_r50_50ep.py")
    source = official_state_dict("multi_scale", **COCO)
    torch.save(
        {"model": source, "args": argparse.Namespace(lr=2e-4, with_box_refine=False), "epoch": 49},
        tmp_path / "official.pth",
    )
    tool.main(["--config-file", config, str(tmp_path / "official.pth"), str(tmp_path / "d2.pth")])
    out = capsys.readouterr().out
    assert (
        "4-level, box refinement off, two-stage off, 80 classes" in out
        and "0 unused source keys" in out
    )

    # loaded strictly, as for evaluation (its class names checked against COCO's)
    weights = str(tmp_path / "d2.pth")
    model = build_configured_model(load_config(config), weights=weights, device="cpu")
    ids = coco_raw_class_ids()
    assert torch.equal(model.class_embed[0].weight, source["class_embed.0.weight"][ids])
    assert torch.equal(
        model.transformer.decoder.layers[5].norm1.weight,
        source["transformer.decoder.layers.5.norm2.weight"],
    )

    box_refine = str(ROOT / "configs/COCO/deformable_detr_r50_box_refine_50ep.py")
    with pytest.raises(SystemExit, match="^error: .*the checkpoint is 4-level, box refinement off"):
        tool.main(
            ["--config-file", box_refine, str(tmp_path / "official.pth"), str(tmp_path / "bad.pth")]
        )
    assert not (tmp_path / "bad.pth").exists()


def test_convert_hf_tool_on_a_saved_model(tmp_path, capsys):
    """The HF tool on a save_pretrained directory (config.json + model.safetensors),
    with the yacs config of the two-stage variant and 91 classes mapped to 80."""
    tool = load_script("tools/convert_hf_checkpoint.py")
    ours = build_model("two_stage", num_classes=91, **PAPER_SIZES)
    hf = build_hf_peer(ours)
    hf.save_pretrained(tmp_path / "hf")
    config = str(ROOT / "configs/COCO/deformable_detr_r50_two_stage_50ep.yaml")
    tool.main(["--config-file", config, str(tmp_path / "hf"), str(tmp_path / "d2.pth")])
    out = capsys.readouterr().out
    assert "box refinement on, two-stage on, 80 classes" in out and "0 unused source keys" in out
    state = torch.load(tmp_path / "d2.pth", weights_only=True)["model"]
    ids = coco_raw_class_ids()
    assert torch.equal(state["class_embed.3.weight"], hf.class_embed[3].weight.detach()[ids])
    assert torch.equal(
        state["transformer.decoder.layers.2.self_attn.in_proj_weight"][:256],
        hf.model.decoder.layers[2].self_attn.q_proj.weight.detach(),
    )


def test_hf_transformers4_names_with_a_timm_backbone():
    """The hub's checkpoints: transformers 4 key names (fc1, out_proj,
    backbone.conv_encoder) and timm's ResNet-50, whose names are torchvision's."""
    ours, hf = build_model_and_hf_peer("multi_scale")
    renames = [(".mlp.fc", ".fc"), (".self_attn.o_proj.", ".self_attn.out_proj.")]
    legacy = {}
    for key, value in hf.state_dict().items():
        if key.startswith("model.backbone."):
            continue
        for new, old in renames:
            key = key.replace(new, old)
        legacy[key] = value
    official = official_state_dict("multi_scale")
    timm = {
        k.replace("backbone.0.body.", "model.backbone.conv_encoder.model."): v
        for k, v in official.items()
        if k.startswith("backbone.")
    }
    legacy.update(timm)
    conversion = convert_hf_state_dict(legacy)
    assert conversion.unused == []
    load_conversion(ours, conversion)
    state = ours.state_dict()
    assert torch.equal(
        state["backbone.res3.1.conv2.norm.running_var"],
        timm["model.backbone.conv_encoder.model.layer2.1.bn2.running_var"],
    )
    assert torch.equal(
        state["transformer.encoder.layers.1.ffn.linear1.weight"],
        legacy["model.encoder.layers.1.fc1.weight"],
    )
    assert torch.equal(
        state["transformer.decoder.layers.0.self_attn.out_proj.bias"],
        legacy["model.decoder.layers.0.self_attn.out_proj.bias"],
    )


def test_convert_official_tool_refuses_unsafe_pickles(tmp_path):
    torch.save({"model": {}, "args": Path("/not/a/plain/type")}, tmp_path / "odd.pth")
    with pytest.raises(
        ValueError, match="odd.pth: not loadable as data .*re-save the state_dict alone"
    ):
        converter.load_official(str(tmp_path / "odd.pth"))
    (tmp_path / "empty.pth").touch()
    with pytest.raises(ValueError, match="empty.pth: the file is empty"):
        converter.load_official(str(tmp_path / "empty.pth"))
    torch.save({"model": {"a": 1}}, tmp_path / "not_weights.pth")
    with pytest.raises(ValueError, match="expected the official checkpoint"):
        converter.load_official(str(tmp_path / "not_weights.pth"))


def test_convert_hf_tool_points_official_checkpoints_to_the_other_tool(tmp_path):
    torch.save(
        {"model": {"a": torch.ones(1)}, "args": argparse.Namespace(lr=2e-4)},
        tmp_path / "official.pth",
    )
    torch.save(
        {"model": {"a": torch.ones(1)}, "args": {"lr": 2e-4}}, tmp_path / "official_plain_args.pth"
    )
    for name in ("official.pth", "official_plain_args.pth"):
        with pytest.raises(
            ValueError,
            match=f"{name}: .*; convert official Deformable-DETR checkpoints with "
            "tools/convert_official_checkpoint.py$",
        ):
            converter.load_hf(str(tmp_path / name))
    (tmp_path / "empty.bin").touch()
    with pytest.raises(ValueError, match="empty.bin: the file is empty"):
        converter.load_hf(str(tmp_path / "empty.bin"))
