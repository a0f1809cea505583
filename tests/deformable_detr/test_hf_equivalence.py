"""Our model computes what HF transformers' DeformableDetrForObjectDetection
computes, in all four variants, once HF's random weights are converted into ours.

Both run in float64 and eval mode on the same images, one at a time and as a
padded batch of two sizes. Compared: the class logits and boxes of every
decoder layer, the two-stage encoder proposals, and the post-processed top-k
detections. Where the two legitimately differ, the test maps before comparing:

- HF takes normalized, padded pixel values and a pixel mask; ours normalizes
  and pads the 0-255 images itself (the same arithmetic, checked bit-exact).
- Post-processing: ours runs detectron2's detector_postprocess, which clips the
  boxes to the image and drops empty ones; HF's boxes are clipped and filtered
  the same way before comparing.
- Two-stage: HF rounds the proposals' sine position embedding to float32 even
  in a float64 model (DeformableDetrModel.get_proposal_pos_embed computes it in
  float32); ours keeps the model's precision. The test asserts that this is the
  only difference: the two embeddings agree to float32 precision, and with ours
  substituted for HF's the two models agree to float64 precision.
"""

import pytest
import torch
from detectron2.structures import Boxes
from transformers import DeformableDetrImageProcessor  # a test requirement (requirements.txt)

from deformable_detr.checkpoint.hf_peer import build_hf_peer
from deformable_detr.checkpoint.state_dicts import (
    coco_raw_class_ids,
    convert_hf_state_dict,
    load_conversion,
)

from .tiny_model import VARIANTS, build_model, build_model_and_hf_peer

ATOL = 1e-10
SIZES = [(96, 128), (72, 104)]  # two sizes: the batch pads the second one


def _perturb(model: torch.nn.Module, seed: int = 0):
    """Noise on every weight and buffer: a fresh model's LayerNorms are all ones and
    many biases zero, which would hide swapped or missing tensors."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if not t.is_floating_point():
                continue
            noise = torch.rand(t.shape, generator=generator, dtype=t.dtype)
            if name.endswith("running_var"):
                t.copy_(0.5 + noise)
            else:
                t.add_(0.2 * (noise - 0.5))


def _models(variant, num_classes=5):
    ours, hf = build_model_and_hf_peer(variant, num_classes)
    _perturb(hf)
    return ours.double().eval(), hf.double().eval()


def _images(seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), generator=generator).double() for h, w in SIZES]


def _hf_inputs(ours, images):
    """HF's inputs: normalized images padded bottom-right with 0, and the pixel mask."""
    H, W = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    pixel_values = torch.zeros(len(images), 3, H, W, dtype=torch.float64)
    pixel_mask = torch.zeros(len(images), H, W, dtype=torch.long)
    for i, image in enumerate(images):
        pixel_values[i, :, : image.shape[1], : image.shape[2]] = (
            image - ours.pixel_mean
        ) / ours.pixel_std
        pixel_mask[i, : image.shape[1], : image.shape[2]] = 1
    return pixel_values, pixel_mask


def _run_hf(hf, pixel_values, pixel_mask):
    # labels only make HF return every decoder layer's predictions (auxiliary_outputs)
    labels = [
        {
            "class_labels": torch.tensor([0]),
            "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]], dtype=torch.float64),
        }
    ] * len(pixel_values)
    with torch.no_grad():
        return hf(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)


def _per_layer(ours_outputs, hf_outputs):
    ours = [(o["pred_logits"], o["pred_boxes"]) for o in ours_outputs["aux_outputs"]]
    ours.append((ours_outputs["pred_logits"], ours_outputs["pred_boxes"]))
    theirs = [(o["logits"], o["pred_boxes"]) for o in hf_outputs.auxiliary_outputs]
    theirs.append((hf_outputs.logits, hf_outputs.pred_boxes))
    return ours, theirs


def _assert_outputs_match(ours, hf, images, atol=ATOL):
    pixel_values, pixel_mask = _hf_inputs(ours, images)
    with torch.no_grad():
        ours_images = ours.preprocess_image([{"image": image} for image in images])
        assert torch.equal(ours_images.tensor, pixel_values)
        ours_outputs = ours.predict(ours_images)
    hf_outputs = _run_hf(hf, pixel_values, pixel_mask)
    ours_layers, hf_layers = _per_layer(ours_outputs, hf_outputs)
    assert len(ours_layers) == len(hf_layers) == ours.transformer.decoder.num_layers
    for layer, ((logits, boxes), (hf_logits, hf_boxes)) in enumerate(zip(ours_layers, hf_layers)):
        torch.testing.assert_close(
            logits, hf_logits, rtol=0, atol=atol, msg=lambda m: f"layer {layer} logits: {m}"
        )
        torch.testing.assert_close(
            boxes, hf_boxes, rtol=0, atol=atol, msg=lambda m: f"layer {layer} boxes: {m}"
        )
    if ours.two_stage:
        enc = ours_outputs["enc_outputs"]
        torch.testing.assert_close(
            enc["pred_logits"], hf_outputs.enc_outputs_class, rtol=0, atol=atol
        )
        torch.testing.assert_close(
            enc["pred_boxes"], hf_outputs.enc_outputs_coord_logits.sigmoid(), rtol=0, atol=atol
        )
    return hf_outputs


def _assert_detections_match(ours, hf_outputs, images):
    """Our top-k detections (forward in eval) against HF's post-processing of its outputs."""
    with torch.no_grad():
        results = ours([{"image": image} for image in images])
    sizes = [tuple(image.shape[1:]) for image in images]
    hf_results = DeformableDetrImageProcessor().post_process_object_detection(
        hf_outputs, threshold=0.0, target_sizes=sizes, top_k=ours.test_topk
    )
    for result, hf_result, size in zip(results, hf_results, sizes):
        boxes = Boxes(hf_result["boxes"].clone())
        boxes.clip(size)
        keep = boxes.nonempty()
        instances = result["instances"]
        assert len(instances) == int(keep.sum()) > 0
        torch.testing.assert_close(instances.scores, hf_result["scores"][keep], rtol=0, atol=ATOL)
        assert torch.equal(instances.pred_classes, hf_result["labels"][keep])
        torch.testing.assert_close(
            instances.pred_boxes.tensor, boxes.tensor[keep], rtol=0, atol=1e-8
        )


def _use_our_proposal_embedding(ours, hf):
    """Replace HF's float32-rounded proposal embedding by ours (see the module docstring)."""
    hf.model.get_proposal_pos_embed = ours.transformer.proposal_position_embedding


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_converted_hf_weights_give_hf_outputs(variant):
    ours, hf = _models(variant)
    conversion = convert_hf_state_dict(hf.state_dict())
    assert conversion.unused == []
    load_conversion(ours, conversion)
    if ours.two_stage:
        _use_our_proposal_embedding(ours, hf)
    images = _images()
    for single in images:
        _assert_outputs_match(ours, hf, [single])
    hf_outputs = _assert_outputs_match(ours, hf, images)  # padded batch
    _assert_detections_match(ours, hf_outputs, images)


def test_hf_two_stage_differs_only_by_its_float32_proposal_embedding():
    ours, hf = _models("two_stage")
    load_conversion(ours, convert_hf_state_dict(hf.state_dict()))
    proposals = torch.randn(2, 12, 4, dtype=torch.float64) * 3
    ours_embedding = ours.transformer.proposal_position_embedding(proposals)
    hf_embedding = hf.model.get_proposal_pos_embed(proposals)
    assert ours_embedding.dtype == hf_embedding.dtype == torch.float64
    error = (ours_embedding - hf_embedding).abs().max().item()
    assert 1e-12 < error < 1e-6  # float32 precision, not float64
    # unpatched, HF's outputs stay within float32 rounding of ours
    _assert_outputs_match(ours, hf, _images(), atol=1e-5)


def test_coco_class_map_selects_hf_logits():
    """A 91-way COCO HF checkpoint into an 80-class model: our class k is HF's
    logit of COCO id coco_raw_class_ids()[k]; two-stage keeps HF's encoder
    objectness logit (index 0), so the same proposals are picked."""
    ours_91, hf = _models("two_stage", num_classes=91)
    _use_our_proposal_embedding(ours_91, hf)
    ours_80, _ = _models("two_stage", num_classes=80)
    ids = coco_raw_class_ids()
    conversion = convert_hf_state_dict(hf.state_dict())
    conversion.select_classes(ids)
    assert conversion.num_classes == 80
    load_conversion(ours_80, conversion)
    images = _images()
    pixel_values, pixel_mask = _hf_inputs(ours_80, images)
    hf_outputs = _run_hf(hf, pixel_values, pixel_mask)
    with torch.no_grad():
        outputs = ours_80.predict(ours_80.preprocess_image([{"image": image} for image in images]))
    torch.testing.assert_close(
        outputs["pred_logits"], hf_outputs.logits[..., ids], rtol=0, atol=ATOL
    )
    torch.testing.assert_close(outputs["pred_boxes"], hf_outputs.pred_boxes, rtol=0, atol=ATOL)
    torch.testing.assert_close(
        outputs["enc_outputs"]["pred_logits"][..., 0],
        hf_outputs.enc_outputs_class[..., 0],
        rtol=0,
        atol=ATOL,
    )


def test_hf_peer_refuses_what_hf_cannot_express():
    ours = build_model("multi_scale", depth=50, hidden_dim=64)  # GroupNorm with 8 groups; HF has 32
    with pytest.raises(ValueError, match="GroupNorm"):
        build_hf_peer(ours)
