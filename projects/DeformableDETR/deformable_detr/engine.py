"""The training loop step of the recipe: optional autocast (float16 with a
gradient scaler, or bfloat16), gradient clipping, and a clear stop on a
non-finite loss before the weights are touched."""
import time
from typing import Optional

import torch
from detectron2.engine import SimpleTrainer


class DetrTrainer(SimpleTrainer):
    """SimpleTrainer with the Deformable DETR step.

    Args:
        model, data_loader, optimizer: as SimpleTrainer.
        clip_max_norm: clip the gradients' global L2 norm to this (0 or None: no clipping).
        amp_dtype: None, "float16" or "bfloat16": autocast the forward pass.
    """

    def __init__(self, model, data_loader, optimizer, clip_max_norm: Optional[float] = None, amp_dtype: Optional[str] = None):
        super().__init__(model, data_loader, optimizer)
        if amp_dtype not in (None, "float16", "bfloat16"):
            raise ValueError(f"amp_dtype must be None, 'float16' or 'bfloat16', got {amp_dtype!r}")
        self.clip_max_norm = clip_max_norm
        self.amp_dtype = getattr(torch, amp_dtype) if amp_dtype else None
        self.device_type = next(model.parameters()).device.type
        self.grad_scaler = torch.amp.GradScaler(self.device_type) if self.amp_dtype == torch.float16 else None

    def run_step(self):
        assert self.model.training, "DetrTrainer: the model was changed to eval mode"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(self.device_type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        if not torch.isfinite(losses):
            values = {k: v.detach().item() for k, v in loss_dict.items()}
            raise FloatingPointError(
                f"non-finite loss at iteration {self.iter}: {values}. Training stopped before the optimizer "
                "step; the last periodic checkpoint in the output directory is the last good one "
                "(try a lower learning rate, gradient clipping, or float32)."
            )

        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
            self.grad_scaler.unscale_(self.optimizer)
        else:
            losses.backward()
        if self.clip_max_norm:
            total_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_max_norm)
            self.storage.put_scalar("grad_norm", float(total_norm), smoothing_hint=True)
        self._write_metrics(loss_dict, data_time)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
