"""DetrTrainer: a non-finite loss stops training before the weights change,
gradient clipping, and autocast training steps."""

import pytest
import torch
from detectron2.utils.events import EventStorage

from deformable_detr.engine.trainer import DetrTrainer

from .tiny_model import build_model, detection_batch


class _LossModel(torch.nn.Module):
    def __init__(self, loss_value):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))
        self.loss_value = loss_value

    def forward(self, data):
        return {"loss_a": self.weight.sum() * self.loss_value}


def _step(trainer):
    with EventStorage(0) as storage:
        trainer.storage = storage
        trainer.iter = 0
        trainer.run_step()


def test_non_finite_loss_stops_before_the_optimizer_step():
    model = _LossModel(float("nan"))
    trainer = DetrTrainer(
        model, [[{}]] * 2, torch.optim.SGD(model.parameters(), lr=1.0), clip_max_norm=0.1
    )
    with pytest.raises(
        FloatingPointError, match="non-finite loss at iteration 0, first in loss_a.*last checkpoint"
    ):
        _step(trainer)
    assert torch.equal(model.weight, torch.ones(3)), "the weights were not touched"


def test_gradients_are_clipped():
    model = _LossModel(100.0)
    trainer = DetrTrainer(
        model, [[{}]] * 2, torch.optim.SGD(model.parameters(), lr=1.0), clip_max_norm=0.1
    )
    _step(trainer)
    step = torch.ones(3) - model.weight.detach()
    torch.testing.assert_close(step.norm(), torch.tensor(0.1))


def test_bad_amp_dtype():
    model = _LossModel(1.0)
    with pytest.raises(ValueError, match="amp_dtype must be"):
        DetrTrainer(model, [], torch.optim.SGD(model.parameters(), lr=1.0), amp_dtype="fp8")


def test_bfloat16_autocast_step_on_cpu():
    torch.manual_seed(0)
    model = build_model("multi_scale")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    trainer = DetrTrainer(
        model,
        [detection_batch([(64, 64), (64, 96)])] * 2,
        optimizer,
        clip_max_norm=0.1,
        amp_dtype="bfloat16",
    )
    before = model.query_embed.weight.detach().clone()
    _step(trainer)
    assert not torch.equal(before, model.query_embed.weight)
    assert torch.isfinite(model.query_embed.weight).all()


def test_images_without_annotations_train():
    torch.manual_seed(0)
    model = build_model("box_refine").train()
    batch = detection_batch([(64, 64), (64, 96)])
    batch[1]["instances"] = batch[1]["instances"][:0]
    losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


class _NaNGradientModel(torch.nn.Module):
    """A finite loss whose gradient with respect to `second` is NaN."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Parameter(torch.ones(2))
        self.second = torch.nn.Parameter(torch.zeros(2))

    def forward(self, data):
        return {"loss_a": self.first.sum(), "loss_b": self.second.abs().sqrt().sum() * 0}


@pytest.mark.parametrize("clip_max_norm", [0.1, 0.0])
def test_non_finite_gradient_stops_before_the_optimizer_step(clip_max_norm):
    model = _NaNGradientModel()
    optimizer = torch.optim.SGD(
        [{"params": [model.first]}, {"params": [model.second], "lr": 0.5}], lr=1.0
    )
    trainer = DetrTrainer(model, [[{}]] * 2, optimizer, clip_max_norm=clip_max_norm)
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite gradient at iteration 0, first in second \(parameter group 1",
    ):
        _step(trainer)
    assert torch.equal(model.first, torch.ones(2)) and torch.equal(model.second, torch.zeros(2))


def test_nan_image_stops_before_the_forward_pass():
    model = _LossModel(1.0)
    batch = [{"image": torch.full((3, 4, 4), float("nan")), "file_name": "broken.jpg"}]
    trainer = DetrTrainer(model, [batch] * 2, torch.optim.SGD(model.parameters(), lr=1.0))
    with pytest.raises(FloatingPointError, match="input image broken.jpg at iteration 0"):
        _step(trainer)


def test_matcher_error_names_the_iteration():
    class _DivergedModel(_LossModel):
        def forward(self, data):
            raise FloatingPointError("HungarianMatcher: the matching cost is NaN or Inf")

    trainer = DetrTrainer(
        _DivergedModel(1.0), [[{}]] * 2, torch.optim.SGD(_LossModel(1.0).parameters(), lr=1.0)
    )
    with pytest.raises(FloatingPointError, match="at iteration 0: HungarianMatcher"):
        _step(trainer)


def test_float16_grad_scaler_state_is_saved_and_restored():
    model = _LossModel(1.0)
    trainer = DetrTrainer(
        model, [[{}]] * 2, torch.optim.SGD(model.parameters(), lr=1.0), amp_dtype="float16"
    )
    _step(trainer)
    trainer.grad_scaler.update(new_scale=1024.0)
    state = trainer.state_dict()
    assert state["grad_scaler"]["scale"] == 1024.0

    resumed = DetrTrainer(
        model, [[{}]] * 2, torch.optim.SGD(model.parameters(), lr=1.0), amp_dtype="float16"
    )
    assert resumed.grad_scaler.get_scale() != 1024.0
    resumed.load_state_dict(state)
    assert resumed.grad_scaler.get_scale() == 1024.0


def test_float16_overflow_is_a_skipped_step_not_an_error():
    model = _NaNGradientModel()
    trainer = DetrTrainer(
        model, [[{}]] * 2, torch.optim.SGD(model.parameters(), lr=1.0), amp_dtype="float16"
    )
    _step(trainer)
    assert torch.equal(model.first, torch.ones(2)), "the scaler skipped the step"
    assert trainer.grad_scaler.get_scale() < 2.0**16, "and lowered its scale"
