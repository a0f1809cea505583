#!/usr/bin/env python
"""Convert a public backbone checkpoint into detectron2's names, for the
`train.init_checkpoint` of the Swin and ViT configs.

    python tools/convert_backbone_checkpoint.py --source swin \\
        swin_tiny_patch4_window7_224.pth swin_t_d2.pth
    python tools/convert_backbone_checkpoint.py --source vit \\
        mae_pretrain_vit_base.pth vit_b_d2.pth
    # then
    python tools/lazyconfig_train_net.py --num-gpus 8 \\
        --config-file configs/COCO/deformable_detr_swin_t_50ep.py \\
        train.init_checkpoint=swin_t_d2.pth

--source swin: the official Swin release (github.com/microsoft/Swin-Transformer);
--source timm_swin: timm's Swin (its model.safetensors / pytorch_model.bin, e.g. of
timm/swin_base_patch4_window7_224.ms_in22k);
--source vit: timm's ViT or MAE's pretraining. With --config-file, the result is
loaded into the config's model: every converted key must fit (name and shape),
and the backbone keys left unfilled must be those detection adds (Swin's output
norms, ViTDet's relative positions and feature pyramid).
"""

import argparse
import sys

import torch

from deformable_detr.checkpoint.backbone_weights import (
    BACKBONE_SOURCES,
    check_fits,
    convert_backbone_state_dict,
)
from deformable_detr.checkpoint.checkpointer import load_weights_file
from deformable_detr.config.build import build_model, load_config


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", required=True, choices=sorted(BACKBONE_SOURCES))
    parser.add_argument("--config-file", help="LazyConfig whose model the result must fit")
    parser.add_argument("input")
    parser.add_argument("output")
    args = parser.parse_args(argv)
    try:
        converted, dropped = convert_backbone_state_dict(load_weights_file(args.input), args.source)
        if args.config_file:
            model = build_model(load_config(args.config_file), weights=None, device="cpu")
            check_fits(model, converted, args.source)
    except Exception as error:
        sys.exit(f"convert_backbone_checkpoint: {args.input}: {error}")
    torch.save({"model": converted}, args.output)
    print(f"wrote {len(converted)} tensors to {args.output}; dropped {len(dropped)}: {dropped}")


if __name__ == "__main__":
    main()
