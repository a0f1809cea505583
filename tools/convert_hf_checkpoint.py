#!/usr/bin/env python
"""Convert the weights of a HF transformers DeformableDetrForObjectDetection into
a detectron2 checkpoint of this project's model.

    python tools/convert_hf_checkpoint.py \\
        --config-file configs/COCO/deformable_detr_r50_50ep.py path/to/hf_model_dir model_hf.pth

The input is a directory written by save_pretrained (config.json with
model.safetensors or pytorch_model.bin) or one such weights file. The backbone
may be transformers' own ResNet or timm's (the hub's checkpoints use timm's);
both are renamed into detectron2's ResNet. With config.json beside the weights,
box refinement and the decoder depth are read from it; without it they are
inferred from the weights. HF ties every class head (and, without box
refinement, every box head) to head 0 and saves one copy: those heads are
filled from head 0, which is what HF computes with. The variant, class and key
checks are those of tools/convert_official_checkpoint.py (both tools are
deformable_detr.checkpoint.converter).
"""

from deformable_detr.checkpoint.converter import main as convert_main
from deformable_detr.checkpoint.converter import read_hf


def main(argv=None):
    convert_main(read_hf, __doc__, argv)


if __name__ == "__main__":
    main()
