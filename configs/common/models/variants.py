# The paper's variants of multi-scale Deformable DETR, as changes to a model config
# of any backbone (configs/COCO/*_{single_scale,box_refine,two_stage}_50ep.py and the
# shapes benchmark's apply them; on the command line, box refinement and two-stage are
# model.with_box_refine=True and model.two_stage=True).


def single_scale(model):
    """Single-scale Deformable DETR: the backbone's last (stride-32) level only, as
    the paper's res5 of ResNet (stage 4 of Swin, the 1/32 level of ViT's pyramid)."""
    backbone = model.backbone
    if "out_indices" in backbone:  # SwinTransformer
        backbone.out_indices = backbone.out_indices[-1:]
    elif "scale_factors" in backbone:  # ViT's SimpleFeaturePyramid
        backbone.scale_factors = backbone.scale_factors[-1:]
    else:  # ResNet
        backbone.out_features = backbone.out_features[-1:]
    model.in_features = model.in_features[-1:]
    model.num_feature_levels = 1
    return model


def box_refine(model):
    """+ iterative bounding-box refinement: each decoder layer refines the boxes of
    the one before."""
    model.with_box_refine = True
    return model


def two_stage(model):
    """++ two-stage: the encoder proposes the decoder's queries (with box refinement,
    as in the paper)."""
    model.two_stage = True
    return box_refine(model)
