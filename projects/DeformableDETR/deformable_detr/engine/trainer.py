"""The training loop step of the recipe: optional autocast (float16 with a
gradient scaler, or bfloat16), gradient clipping, and a clear stop on a
non-finite input, loss or gradient before the weights are touched."""

import logging
import math
import time
from typing import Optional

import torch
from detectron2.engine import SimpleTrainer

from .rng import restore_rng_states, rng_states


class DetrTrainer(SimpleTrainer):
    """SimpleTrainer with the Deformable DETR step.

    Args:
        model, data_loader, optimizer: as SimpleTrainer.
        clip_max_norm: clip the gradients' global L2 norm to this (0 or None: no clipping).
        amp_dtype: None, "float16" or "bfloat16": autocast the forward pass.
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        clip_max_norm: Optional[float] = None,
        amp_dtype: Optional[str] = None,
    ):
        super().__init__(model, data_loader, optimizer)
        if amp_dtype not in (None, "float16", "bfloat16"):
            raise ValueError(f"amp_dtype must be None, 'float16' or 'bfloat16', got {amp_dtype!r}")
        self.clip_max_norm = clip_max_norm
        self.amp_dtype = getattr(torch, amp_dtype) if amp_dtype else None
        self.device_type = next(model.parameters()).device.type
        self.grad_scaler = (
            torch.amp.GradScaler(self.device_type) if self.amp_dtype == torch.float16 else None
        )

    def run_step(self):
        assert self.model.training, "DetrTrainer: the model was changed to eval mode"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        self._check_images(data)

        try:
            with torch.autocast(
                self.device_type,
                dtype=self.amp_dtype or torch.float32,
                enabled=self.amp_dtype is not None,
            ):
                loss_dict = self.model(data)
        except FloatingPointError as e:  # from the matcher: non-finite predictions
            raise FloatingPointError(f"at iteration {self.iter}: {e}") from e
        losses = sum(loss_dict.values())
        if not torch.isfinite(losses):
            values = {k: v.detach().item() for k, v in loss_dict.items()}
            first = next((k for k, v in values.items() if not math.isfinite(v)), "the sum")
            self._stop(f"non-finite loss at iteration {self.iter}, first in {first}: {values}")

        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
            self.grad_scaler.unscale_(self.optimizer)
        else:
            losses.backward()
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        total_norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
        # float16: the scaler skips the step of a non-finite gradient and lowers its scale
        if self.grad_scaler is None and not torch.isfinite(total_norm):
            self._stop(
                f"non-finite gradient at iteration {self.iter}, first in "
                f"{self._first_non_finite_gradient()}"
            )
        if self.clip_max_norm:
            torch.nn.utils.clip_grads_with_norm_(parameters, self.clip_max_norm, total_norm)
            self.storage.put_scalar("grad_norm", float(total_norm), smoothing_hint=True)
        self._write_metrics(loss_dict, data_time)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def _check_images(self, data: list) -> None:
        """Stops on NaN or Inf in a floating-point input image, before the
        forward pass updates batch-norm statistics with it."""
        for item in data:
            image = item.get("image") if isinstance(item, dict) else None
            if (
                isinstance(image, torch.Tensor)
                and image.is_floating_point()
                and not torch.isfinite(image).all()
            ):
                raise FloatingPointError(
                    "non-finite values (NaN or Inf) in the input image "
                    f"{item.get('file_name', '')} at iteration {self.iter}; the data loader or "
                    "mapper produced it, training stopped before the forward pass"
                )

    def _first_non_finite_gradient(self) -> str:
        for group_index, group in enumerate(self.optimizer.param_groups):
            for parameter in group["params"]:
                if parameter.grad is not None and not torch.isfinite(parameter.grad).all():
                    name = next(n for n, p in self.model.named_parameters() if p is parameter)
                    return f"{name} (parameter group {group_index}, lr {group['lr']:g})"
        return "no parameter of the optimizer"

    @staticmethod
    def _stop(message: str):
        raise FloatingPointError(
            f"{message}. Training stopped before the optimizer step; the last checkpoint in the "
            "output directory is the last good one (try a lower learning rate, gradient clipping, "
            "or float32)."
        )

    def state_dict(self):
        """SimpleTrainer's state, the gradient scaler's, the random generators' of
        this process (dropout, ...) and where the data loader is, when it can say
        (ResumableTrainLoader): what a resumed training needs to continue exactly."""
        state = super().state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        state["rng"] = rng_states()
        if hasattr(self.data_loader, "state_dict"):
            state["data_loader"] = self.data_loader.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
        if "rng" in state_dict:
            restore_rng_states(state_dict["rng"])
        resumable = hasattr(self.data_loader, "load_state_dict")
        if resumable and "data_loader" in state_dict:
            self.data_loader.load_state_dict(state_dict["data_loader"])
            return
        why = (
            "the checkpoint does not say where the data was"
            if resumable
            else f"{type(self.data_loader).__name__} cannot resume (build_resumable_train_loader "
            "can)"
        )
        logging.getLogger(__name__).warning(f"the training data starts over: {why}")
