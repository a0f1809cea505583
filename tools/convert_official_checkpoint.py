#!/usr/bin/env python
"""Convert a checkpoint of the official Deformable-DETR release into a detectron2
checkpoint of this project's model.

    python tools/convert_official_checkpoint.py \\
        --config-file configs/COCO/deformable_detr_r50_box_refine_50ep.py \\
        r50_deformable_detr_plus_iterative_bbox_refinement-checkpoint.pth model_box_refine.pth
    # then, e.g.
    python tools/lazyconfig_train_net.py \\
        --config-file configs/COCO/deformable_detr_r50_box_refine_50ep.py \\
        --eval-only train.init_checkpoint=model_box_refine.pth

The input is the official `.pth` (a dict whose "model" is the state_dict; its
"args", an argparse.Namespace, is allowed through torch.load's weights_only
unpickler). The config decides the variant: a checkpoint of another variant
(levels, box refinement, two-stage) is refused, naming both. The official COCO
heads have 91 rows indexed by raw COCO category id; with an 80-class config
they are mapped to detectron2's contiguous ids (--class-map auto, the default).
Every source key is accounted for: converted, a repeat of a shared head, or
listed as unused; a model key the checkpoint cannot fill is an error.
"""

from deformable_detr.checkpoint.converter import main as convert_main
from deformable_detr.checkpoint.converter import read_official


def main(argv=None):
    convert_main(read_official, __doc__, argv)


if __name__ == "__main__":
    main()
