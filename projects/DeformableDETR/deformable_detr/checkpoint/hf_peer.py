"""HF transformers' DeformableDetrForObjectDetection with the architecture of one
of our models (a transformers ResNet for detectron2's ResNet), for comparisons
and benchmarks. Needs `transformers`; nothing is downloaded."""

from detectron2.modeling.backbone import ResNet
from detectron2.modeling.backbone.resnet import BottleneckBlock
from torch import nn

from ..modeling.meta_arch.deformable_detr import DeformableDETR

__all__ = ["build_hf_peer"]


def _check(condition: bool, what: str):
    if not condition:
        raise ValueError(f"HF DeformableDetr has no equivalent of this model: {what}")


def _resnet_config(backbone: ResNet, in_features):
    from transformers import ResNetConfig

    _check(
        isinstance(backbone, ResNet),
        f"backbone {type(backbone).__name__} is not detectron2's ResNet",
    )
    blocks = [stage[0] for stage in backbone.stages]
    bottleneck = isinstance(blocks[0], BottleneckBlock)
    return ResNetConfig(
        embedding_size=backbone.stem.out_channels,
        depths=[len(stage) for stage in backbone.stages],
        hidden_sizes=[stage[-1].out_channels for stage in backbone.stages],
        layer_type="bottleneck" if bottleneck else "basic",
        # stride in the first 1x1 convolution (MSRA) or in the 3x3 one (torchvision)
        downsample_in_bottleneck=bottleneck and blocks[1].conv1.stride == (2, 2),
        out_features=[f"stage{int(name[len('res') :]) - 1}" for name in in_features],
    )


def build_hf_peer(model: DeformableDETR, **config_overrides) -> nn.Module:
    """An untrained transformers DeformableDetrForObjectDetection shaped like
    `model`: same backbone stages, levels, layers, heads, points, queries and
    classes. Its weights are random: convert them into `model` with
    deformable_detr.checkpoint.state_dicts.convert_hf_state_dict to compare the two.
    config_overrides go to DeformableDetrConfig (HF's loss and matcher settings).

    HF freezes its backbone by name, and with a transformers ResNet that test
    matches no parameter (it looks for "stage.1" in "encoder.stages.1..."), which
    freezes the whole backbone; here the stages our model trains are trainable.
    """
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

    transformer = model.transformer
    encoder_layer = transformer.encoder.layers[0]
    decoder_layer = transformer.decoder.layers[0]
    position = model.position_embedding
    _check(
        (position.temperature, position.normalize, position.offset) == (10000, True, -0.5),
        "its sine position embedding is not the paper's (temperature 10000, normalized, offset "
        "-0.5)",
    )
    _check(
        not model.two_stage or transformer.proposal_temperature == 10000,
        "its two-stage proposal embedding's temperature is not 10000",
    )
    _check(
        model.input_proj[0][1].num_groups == 32,
        "its input projections' GroupNorm has not 32 groups",
    )
    _check(not model.two_stage or model.with_box_refine, "two-stage without box refinement")
    config = DeformableDetrConfig(
        use_timm_backbone=False,
        backbone_config=_resnet_config(model.backbone, model.in_features),
        use_pretrained_backbone=False,
        num_labels=model.num_classes,
        num_queries=model.num_queries,
        d_model=transformer.hidden_dim,
        encoder_layers=len(transformer.encoder.layers),
        decoder_layers=transformer.decoder.num_layers,
        encoder_attention_heads=encoder_layer.self_attn.num_heads,
        decoder_attention_heads=decoder_layer.cross_attn.num_heads,
        encoder_ffn_dim=encoder_layer.ffn.linear1.out_features,
        decoder_ffn_dim=decoder_layer.ffn.linear1.out_features,
        dropout=encoder_layer.dropout.p,
        attention_dropout=decoder_layer.self_attn.dropout,
        activation_dropout=encoder_layer.ffn.dropout1.p,
        activation_function="relu",
        num_feature_levels=model.num_feature_levels,
        encoder_n_points=encoder_layer.self_attn.num_points,
        decoder_n_points=decoder_layer.cross_attn.num_points,
        with_box_refine=model.with_box_refine,
        two_stage=model.two_stage,
        two_stage_num_proposals=transformer.two_stage_num_proposals,
        auxiliary_loss=model.aux_loss,
        disable_custom_kernels=True,
        **config_overrides,
    )
    peer = DeformableDetrForObjectDetection(config)
    trained_stages = {
        f"encoder.stages.{i}."
        for i, stage in enumerate(model.backbone.stages)
        if stage[0].conv1.weight.requires_grad
    }
    for name, p in peer.model.backbone.model.named_parameters():
        p.requires_grad_(name.startswith(tuple(trained_stages)))
    return peer
