# Loop settings read by tools/lazyconfig_train_net.py.
train = dict(
    output_dir="./output",
    init_checkpoint="",
    max_iter=90000,
    # With epochs set, max_iter, checkpointer.period and eval_period left None follow from
    # epochs, checkpoint_epochs and eval_epochs at any dataloader.train.total_batch_size, and
    # optimizer.lr, the lr at lr_reference_batch_size, is scaled by lr_scaling ("sqrt",
    # "linear" or "none") to the batch (deformable_detr.solver.schedule).
    epochs=None,
    checkpoint_epochs=None,
    eval_epochs=None,
    lr_reference_batch_size=None,
    lr_scaling="sqrt",
    # fine-tuning: also re-initialise class heads of the same class count when the
    # checkpoint does not record its classes (deformable_detr.checkpoint.loading_rule)
    reinit_class_heads=False,
    amp=dict(enabled=False, dtype="float16"),  # dtype: "float16" or "bfloat16"
    clip_max_norm=0.1,
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=5000, max_to_keep=100),
    eval_period=5000,
    eval_after_train=True,  # False: no evaluation at the end (eval_period 0 then means none at all)
    log_period=20,
    seed=-1,  # < 0: a new random seed each run; a fixed seed makes --resume continue bit-exactly
    # evaluation with test-time augmentation (deformable_detr.modeling.test_time_augmentation):
    # every min size, each with and without a horizontal flip, merged per class by weighted
    # box fusion ("wbf") or NMS ("nms") of the detections overlapping by more than
    # iou_threshold. The paper's
    # Table 3 uses flip and multi-scale testing without giving sizes; these are
    # detectron2's TEST.AUG.
    test_aug=dict(
        enabled=False,
        min_sizes=[400, 500, 600, 700, 800, 900, 1000, 1100, 1200],
        max_size=4000,
        flip=True,
        merge="wbf",
        iou_threshold=0.55,
    ),
    # sliced inference for large images (deformable_detr.modeling.sliced_inference):
    # windows of window_size pixels sharing overlap, each resized by the test mapper's
    # augmentation, optionally one downscaled full view; detections merged per class
    # ("nms" or "wbf"), the model's test_topk per window, max_detections per image
    sliced_inference=dict(
        enabled=False,
        window_size=800,
        overlap=200,
        full_view=False,
        merge="nms",
        iou_threshold=0.5,
        edge_margin=None,
        max_detections=10000,
        batch_size=1,
    ),
    device="cuda",
    # with device "cpu": malloc keeps the memory it frees for the next iteration instead
    # of returning it to the system, so the buffers are not page-faulted in again each
    # time; the process keeps its peak memory (deformable_detr.engine.host_memory, glibc)
    reuse_freed_memory=True,
)
