"""yacs config keys of Deformable DETR (for DefaultPredictor and yacs-based tools).
The defaults of the new keys are the paper's multi-scale R-50 model; the recipe's
values of detectron2's own keys (backbone, input) are in
configs/COCO/Base-DeformableDETR.yaml."""

from detectron2.config import CfgNode as CN


def add_deformable_detr_config(cfg: CN) -> None:
    """Adds cfg.MODEL.DEFORMABLE_DETR, cfg.INPUT.CROP.RESIZE_MIN_SIZES, the solver's
    lr multipliers and the COCO-format dataset files (DATASETS.TRAIN_JSON, ...)."""
    dd = cfg.MODEL.DEFORMABLE_DETR = CN()
    dd.NUM_CLASSES = 80
    dd.IN_FEATURES = ["res3", "res4", "res5"]
    dd.NUM_FEATURE_LEVELS = 4
    dd.NUM_QUERIES = 300
    dd.WITH_BOX_REFINE = False
    dd.TWO_STAGE = False
    dd.HIDDEN_DIM = 256
    dd.NUM_HEADS = 8
    dd.NUM_ENCODER_LAYERS = 6
    dd.NUM_DECODER_LAYERS = 6
    dd.DIM_FEEDFORWARD = 1024
    dd.DROPOUT = 0.1
    dd.ENC_NUM_POINTS = 4
    dd.DEC_NUM_POINTS = 4
    dd.PROPOSAL_BASE_SIZE = 0.05
    dd.PROPOSAL_TEMPERATURE = 10000.0
    dd.POSITION_TEMPERATURE = 10000.0
    dd.POSITION_OFFSET = -0.5
    dd.PRIOR_PROB = 0.01
    dd.AUX_LOSS = True
    dd.TEST_TOPK = 100
    # "fp32", or "bf16": bfloat16 autocast at inference (deformable_detr.export.precision)
    dd.INFERENCE_PRECISION = "fp32"
    dd.MSDA_BACKEND = "auto"
    # the encoder FFN's rows in this many blocks at inference (1: at once); 4 makes the int8
    # export faster on CPUs without VNNI (docs/benchmarks.md)
    dd.ENCODER_FFN_ROW_BLOCKS = 1
    # matcher costs and loss weights
    dd.COST_CLASS = 2.0
    dd.COST_BBOX = 5.0
    dd.COST_GIOU = 2.0
    dd.CLASS_WEIGHT = 2.0
    dd.BBOX_WEIGHT = 5.0
    dd.GIOU_WEIGHT = 2.0
    dd.FOCAL_ALPHA = 0.25
    dd.FOCAL_GAMMA = 2.0

    # DETR's crop branch resizes the shortest edge to one of these before cropping
    cfg.INPUT.CROP.RESIZE_MIN_SIZES = (400, 500, 600)
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.LINEAR_PROJ_MULTIPLIER = 0.1
    # COCO-format datasets given by their files, registered as DATASETS.TRAIN[0] and
    # DATASETS.TEST[0] by deformable_detr.data.build.register_yacs_datasets
    cfg.DATASETS.TRAIN_JSON = ""
    cfg.DATASETS.TRAIN_IMAGE_ROOT = ""
    cfg.DATASETS.TEST_JSON = ""
    cfg.DATASETS.TEST_IMAGE_ROOT = ""
    # DeformableDETRWithTTA: how the augmentations' detections merge per class ("wbf":
    # weighted box fusion, or "nms"), and the IoU above which two are one object
    cfg.TEST.AUG.MERGE = "wbf"
    cfg.TEST.AUG.IOU_THRESH = 0.55
    # SlicedPredictor (deformable_detr.modeling.sliced_inference): overlapping windows of
    # an image of any size, their detections merged; EDGE_MARGIN None keeps cut objects
    sliced = cfg.TEST.SLICED = CN()
    sliced.WINDOW_SIZE = 800
    sliced.OVERLAP = 200
    sliced.FULL_VIEW = False
    sliced.MERGE = "nms"
    sliced.IOU_THRESH = 0.5
    sliced.EDGE_MARGIN = None
    sliced.MAX_DETECTIONS = 10000
    sliced.BATCH_SIZE = 1


def load_yacs_config(config_file: str, opts=()) -> CN:
    """detectron2's defaults plus ours, merged with a YAML file and overrides (KEY VALUE
    pairs or KEY=VALUE, a mistyped key an error naming the closest one: see
    deformable_detr.config.overrides); not frozen, so the caller can still set e.g.
    MODEL.DEVICE."""
    from detectron2.config import get_cfg

    from .overrides import apply_yacs_overrides

    cfg = get_cfg()
    add_deformable_detr_config(cfg)
    cfg.merge_from_file(config_file)
    return apply_yacs_overrides(cfg, list(opts))
