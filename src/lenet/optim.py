"""Optimizers and LR schedules for the engine: torch.optim's SGD/Adam/AdamW, stepped with their
fused kernels, without importing ``torch._dynamo``.

Every ``torch.optim`` optimizer imports ``torch._dynamo`` (~1 s, more than a third of a default
``lenet train``'s training time) the first time it is built or stepped: ``add_param_group``,
``zero_grad``, ``state_dict`` and ``load_state_dict`` are wrapped in ``torch._disable_dynamo`` and
``step`` in a ``graph_break`` guard, there for ``torch.compile``, which never sees our optimizer.
The classes here use torch's own methods without those wrappers and step through the same fused
ATen kernels ``fused=True`` runs, with torch's state layout, so checkpoints are interchangeable.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from lenet.config import TrainConfig


def _unwrapped(fn):
    return getattr(fn, "__wrapped__", fn)


class _Eager:
    """torch.optim's bookkeeping without the torch.compile guards (same code underneath)."""

    add_param_group = _unwrapped(Optimizer.add_param_group)
    zero_grad = _unwrapped(Optimizer.zero_grad)
    state_dict = _unwrapped(Optimizer.state_dict)
    load_state_dict = _unwrapped(Optimizer.load_state_dict)


class FusedAdam(_Eager, torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` (``decoupled``: AdamW), amsgrad/maximize left out."""

    decoupled = False

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient (``closure`` is not supported)."""
        kernel = torch._fused_adamw_ if self.decoupled else torch._fused_adam_
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                state = self.state[p]
                if not state:  # torch's layout: a float32 step count on the parameter's device
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            states = [self.state[p] for p in params]
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1)
            beta1, beta2 = group["betas"]
            kernel(
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [],
                steps,
                amsgrad=False,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=False,
            )


class FusedAdamW(FusedAdam, torch.optim.AdamW):
    """``torch.optim.AdamW(fused=True)``: Adam with decoupled weight decay."""

    decoupled = True


class FusedSGD(_Eager, torch.optim.SGD):
    """``torch.optim.SGD(fused=True)`` with momentum (no dampening, Nesterov or maximize)."""

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient (``closure`` is not supported)."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            momentum = group["momentum"]
            bufs = [self.state[p].get("momentum_buffer") for p in params] if momentum else []
            first = bool(momentum) and all(b is None for b in bufs)
            if first:  # the kernel fills them with the first gradients
                bufs = [torch.empty_like(g) for g in grads]
                for p, b in zip(params, bufs, strict=True):
                    self.state[p]["momentum_buffer"] = b
            torch._fused_sgd_(
                params,
                grads,
                bufs,
                weight_decay=group["weight_decay"],
                momentum=momentum,
                lr=group["lr"],
                dampening=0.0,
                nesterov=False,
                maximize=False,
                is_first_step=first,
            )


def build_optimizer(cfg: TrainConfig, params, device: torch.device) -> Optimizer:
    """SGD (with momentum), Adam or AdamW from the config, fused on CPU and CUDA."""
    params = list(params)
    kw = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        kw["momentum"] = cfg.momentum
    if device.type in ("cpu", "cuda"):
        cls = {"sgd": FusedSGD, "adam": FusedAdam, "adamw": FusedAdamW}[cfg.optimizer]
        return cls(params, fused=True, **kw)
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    return cls[cfg.optimizer](params, **kw)  # other devices: torch's own step


def build_scheduler(
    cfg: TrainConfig, opt: Optimizer, steps_per_epoch: int
) -> tuple[torch.optim.lr_scheduler.LRScheduler | None, bool]:
    """The LR schedule and whether it steps per batch (True) or per epoch (False)."""
    from torch.optim import lr_scheduler

    if cfg.scheduler == "step":
        return lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma), False
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "onecycle" and total >= 4:  # fewer steps cannot hold a warm-up and a decay
        sched = lr_scheduler.OneCycleLR(
            opt,
            max_lr=cfg.lr,
            epochs=cfg.epochs,
            steps_per_epoch=steps_per_epoch,
            pct_start=max(0.25, 2 / total),
        )
        return sched, True
    if cfg.scheduler == "cosine":
        return lr_scheduler.CosineAnnealingLR(opt, T_max=total), True
    return None, False
