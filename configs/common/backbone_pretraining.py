# Backbone pretraining without ImageNet (tools/pretrain_backbone.py,
# deformable_detr.engine.backbone_pretraining): the detector's backbone classifies its
# training objects, cropped square at crop_size pixels with `context` around the box,
# and backgrounds_per_image background crops per image, into the classes plus
# "background" (AdamW, cosine lr over the epochs, random horizontal flips). A config
# that imports this node can be pretrained; its settings are overrides
# (backbone_pretraining.epochs=20).
backbone_pretraining = dict(
    epochs=10,
    batch_size=64,
    lr=1e-3,
    weight_decay=1e-4,
    crop_size=64,
    context=0.2,  # crops are squares 1.2x the box's longer side
    backgrounds_per_image=2,
    max_background_side=None,  # pixels; None: half the image's shorter side
    seed=0,
)
