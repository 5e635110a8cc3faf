"""The one optimizer and learning-rate schedule factory of all tasks.

Optimizers: SGD (momentum, the DeepLab / FastDepth / SSD recipes), AdamW, RMSProp (TF's settings of the
MobileNetV2 paper's SSDLite: decay 0.9, epsilon 1). Norms and biases (every parameter with at most one
dimension) never get weight decay. Schedules, stepped every batch: "one_cycle" (PyTorch's OneCycleLR:
its own warm-up, then cosine decay), "cosine", "poly" ((1 - t)^power, DeepLab) and "constant", the
last three after an optional linear warm-up.
"""

from __future__ import annotations

import math

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw", "rmsprop")
SCHEDULES = ("one_cycle", "cosine", "poly", "constant")


def check_options(optimizer: str, schedule: str, warmup_epochs: float) -> None:
    """Fail early (when the model is built, not when training starts) on a bad combination.

    Raises:
        ValueError: Unknown optimizer or schedule, negative warm-up, or a warm-up with "one_cycle".
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{optimizer}'; choose one of {', '.join(OPTIMIZERS)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule '{schedule}'; choose one of {', '.join(SCHEDULES)}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    if schedule == "one_cycle" and warmup_epochs > 0:
        raise ValueError("schedule 'one_cycle' has its own warm-up (30% of the run); set warmup_epochs to 0")


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with `weight_decay`, and norms and biases (ndim <= 1) without."""
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    module: nn.Module, optimizer: str, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """The optimizer of `module`'s trainable parameters (see the module docstring)."""
    groups = parameter_groups(module, weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, eps=1.0, momentum=momentum)
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer '{optimizer}'; choose one of {', '.join(OPTIMIZERS)}")


def warmup_steps(warmup_epochs: float, total_steps: int, epochs: int) -> int:
    """Steps of a warm-up of `warmup_epochs` (fractions allowed), leaving at least one step after it."""
    if total_steps <= 1:
        return 0
    return min(total_steps - 1, int(warmup_epochs * total_steps / max(1, epochs)))


def build_schedule(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    total_steps: int,
    warmup: int = 0,
    poly_power: float = 0.9,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule over `total_steps`.

    Args:
        optimizer: The optimizer; its learning rate is the peak.
        schedule: One of `SCHEDULES`.
        total_steps: Optimizer steps of the whole run.
        warmup: Linear warm-up steps (not with "one_cycle"), the rate rising to the peak as (s + 1) / (warmup + 1).
        poly_power: Exponent of "poly".

    Returns:
        The scheduler, to be stepped after every optimizer step.
    """
    total_steps = max(1, int(total_steps))
    if schedule == "one_cycle":
        peak = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=total_steps)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule '{schedule}'; choose one of {', '.join(SCHEDULES)}")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        t = min(1.0, (step - warmup) / max(1, total_steps - warmup))  # progress of the decay
        if schedule == "poly":
            return (1.0 - t) ** poly_power
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
