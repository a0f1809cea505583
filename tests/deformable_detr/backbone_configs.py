"""The COCO configs of every backbone, and their models shrunk for CPU tests:
the config's own backbone with its depth or width reduced, and a narrow
transformer."""

from pathlib import Path

from deformable_detr.config.build import build_model, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "COCO"
BACKBONES = ["r101", "x101", "x101_dcn", "swin_t", "swin_b", "swin_l", "vit_b"]
VARIANTS = ["", "_single_scale", "_box_refine", "_two_stage"]


def config_path(backbone: str, variant: str = "") -> Path:
    return CONFIGS / f"deformable_detr_{backbone}{variant}_50ep.py"


def shrink(cfg):
    """Reduces cfg.model in place: ResNets to 50 layers and 1/8 of the widths
    (16 stem channels, 32 to 256 stage outputs, ResNeXt's 32 groups of 1), Swin
    to two blocks a stage and 8 channels a head, ViT to 8 channels a head and
    64 pyramid channels; a 64-wide transformer of one encoder and one decoder
    layer, 10 queries."""
    backbone = cfg.model.backbone
    if "stages" in backbone:  # ResNet / ResNeXt
        backbone.stem.out_channels = backbone.stages.stem_out_channels = 16
        backbone.stages.update(depth=50, res2_out_channels=32)
        backbone.stages.width_per_group = 1 if backbone.stages.get("num_groups", 1) > 1 else 8
    elif "depths" in backbone:  # Swin
        backbone.depths = (2, 2, 2, 2)
        backbone.embed_dim = 8 * backbone.num_heads[0]
    else:  # ViT + simple feature pyramid
        backbone.net.embed_dim = 8 * backbone.net.num_heads
        backbone.out_channels = 64
    transformer = cfg.model.transformer
    transformer.hidden_dim = 64
    transformer.num_encoder_layers = transformer.num_decoder_layers = 1
    transformer.dim_feedforward = 128
    cfg.model.position_embedding.num_pos_feats = 32
    cfg.model.num_queries = 10
    cfg.model.test_topk = 10
    return cfg


def shrunk_model(backbone: str, variant: str = ""):
    """(model, config) of the shrunk config: random weights, on the CPU, in train mode."""
    cfg = shrink(load_config(str(config_path(backbone, variant))))
    return build_model(cfg, weights=None, device="cpu").train(), cfg
