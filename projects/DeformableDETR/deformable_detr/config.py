"""yacs config keys of Deformable DETR (for DefaultPredictor and yacs-based tools).
The defaults are the paper's multi-scale R-50 recipe."""
from detectron2.config import CfgNode as CN


def add_deformable_detr_config(cfg: CN) -> None:
    """Adds cfg.MODEL.DEFORMABLE_DETR and the solver keys of the recipe."""
    dd = cfg.MODEL.DEFORMABLE_DETR = CN()
    dd.NUM_CLASSES = 80
    dd.IN_FEATURES = ["res3", "res4", "res5"]
    dd.NUM_FEATURE_LEVELS = 4
    dd.NUM_QUERIES = 300
    dd.WITH_BOX_REFINE = False
    dd.TWO_STAGE = False
    dd.HIDDEN_DIM = 256
    dd.NHEADS = 8
    dd.ENC_LAYERS = 6
    dd.DEC_LAYERS = 6
    dd.DIM_FEEDFORWARD = 1024
    dd.DROPOUT = 0.1
    dd.ENC_N_POINTS = 4
    dd.DEC_N_POINTS = 4
    dd.PROPOSAL_BASE_SIZE = 0.05
    dd.PROPOSAL_TEMPERATURE = 10000.0
    dd.POSITION_TEMPERATURE = 10000.0
    dd.POSITION_OFFSET = -0.5
    dd.PRIOR_PROB = 0.01
    dd.AUX_LOSS = True
    dd.TEST_TOPK = 100
    dd.MSDA_BACKEND = "auto"
    # matcher costs and loss weights
    dd.COST_CLASS = 2.0
    dd.COST_BBOX = 5.0
    dd.COST_GIOU = 2.0
    dd.CLASS_WEIGHT = 2.0
    dd.BBOX_WEIGHT = 5.0
    dd.GIOU_WEIGHT = 2.0
    dd.FOCAL_ALPHA = 0.25
    dd.FOCAL_GAMMA = 2.0

    # torchvision-style ResNet-50 with frozen BN, stem and res2 frozen
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.280, 103.530]
    cfg.MODEL.PIXEL_STD = [58.395, 57.120, 57.375]
    cfg.INPUT.FORMAT = "RGB"
    # DETR's augmentation (deformable_detr.dataset_mapper.DetrDatasetMapper)
    cfg.INPUT.MIN_SIZE_TRAIN = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
    cfg.INPUT.MAX_SIZE_TRAIN = 1333
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute_range"
    cfg.INPUT.CROP.SIZE = [384, 600]
    cfg.INPUT.CROP.RESIZE_MIN_SIZES = (400, 500, 600)
    cfg.MODEL.META_ARCHITECTURE = "DeformableDETR"

    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.LINEAR_PROJ_MULTIPLIER = 0.1


def load_yacs_config(config_file: str, opts=()) -> CN:
    """detectron2's defaults plus ours, merged with a YAML file and KEY VALUE
    overrides; not frozen, so the caller can still set e.g. MODEL.DEVICE."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_deformable_detr_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg
