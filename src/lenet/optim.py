"""Optimizers and LR schedules for the engine: torch.optim's SGD/Adam/AdamW, stepped with their
fused kernels, without importing ``torch._dynamo``.

Every ``torch.optim`` optimizer imports ``torch._dynamo`` (~1 s, more than a third of a default
``lenet train``'s training time) the first time it is built or stepped: ``add_param_group``,
``zero_grad``, ``state_dict`` and ``load_state_dict`` are wrapped in ``torch._disable_dynamo`` and
``step`` in a ``graph_break`` guard, there for ``torch.compile``, which never sees our optimizer.
The classes here use torch's own methods without those wrappers and step through the same fused
ATen kernels ``fused=True`` runs, with torch's state layout, so checkpoints are interchangeable.

They cover what the engine uses (no closure, amsgrad, maximize, Nesterov, dampening, capturable,
differentiable or tensor learning rate: asking for one is a ``ValueError``, and a closure a
``NotImplementedError``, never silently ignored). :func:`build_optimizer` uses them only where
this torch has the kernels and accepts them (CPU fused kernels are new in torch 2.4), else
torch.optim's own class (``fused=True`` where it works), so every torch in the declared range
trains.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from lenet.config import TrainConfig, paper_eta


def _unwrapped(fn):
    return getattr(fn, "__wrapped__", fn)


# Options torch.optim accepts that the fused step below does not implement (value when off).
_UNSUPPORTED = {
    "amsgrad": False,
    "maximize": False,
    "capturable": False,
    "differentiable": False,
    "nesterov": False,
    "dampening": 0,
}


class _Eager:
    """torch.optim's bookkeeping without the torch.compile guards (same code underneath)."""

    add_param_group = _unwrapped(Optimizer.add_param_group)
    zero_grad = _unwrapped(Optimizer.zero_grad)
    state_dict = _unwrapped(Optimizer.state_dict)
    load_state_dict = _unwrapped(Optimizer.load_state_dict)

    def __init__(self, params, **kwargs):
        for key, off in _UNSUPPORTED.items():
            if kwargs.get(key, off) != off:
                raise ValueError(f"{type(self).__name__} does not support {key}={kwargs[key]!r}")
        if isinstance(kwargs.get("lr"), torch.Tensor):
            raise ValueError(f"{type(self).__name__} does not support a tensor lr")
        super().__init__(params, **{**kwargs, "fused": True})
        for group in self.param_groups:  # add_param_group can bring a group's own options
            self._check_group(group)

    def _check_group(self, group: dict) -> None:
        bad = [k for k, off in _UNSUPPORTED.items() if group.get(k, off) != off]
        if bad or isinstance(group["lr"], torch.Tensor):
            raise ValueError(f"{type(self).__name__} does not support {bad or 'a tensor lr'}")

    @staticmethod
    def _no_closure(closure) -> None:
        if closure is not None:
            raise NotImplementedError(
                "lenet.optim's fused optimizers take no closure: call the closure, then step()"
            )


class FusedAdam(_Eager, torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` (``decoupled``: AdamW), amsgrad/maximize left out."""

    decoupled = False

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient (``closure`` is not supported)."""
        self._no_closure(closure)
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
        self._no_closure(closure)
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


class SDLM(Optimizer):
    """Stochastic diagonal Levenberg-Marquardt (LeCun et al. 1998, appendix C): each parameter
    w_k steps ``-lr / (mu + h_kk) * grad_k``, with ``h_kk`` a Gauss-Newton estimate of the loss's
    second derivative in w_k, re-estimated by :meth:`estimate_diagonal` (the engine calls it on
    500 training images before every pass, as the paper does).

    ``h_kk`` is the exact diagonal of the generalized Gauss-Newton matrix ``J^T H J`` of the
    softmax cross-entropy the engine trains with (``J``: Jacobian of the logits in the weights,
    ``H = diag(p) - p p^T``: the loss Hessian in the logits), averaged over the samples. Why this
    and not the Fisher with sampled labels: for cross-entropy the two have the same expectation,
    but the GGN diagonal is deterministic (no sampling noise on 500 images, testable element by
    element) and costs one Jacobian per image either way. Like the paper's "Levenberg-Marquardt"
    approximation it drops every f'' term (so h_kk >= 0); unlike the paper's back-propagated
    diagonal it keeps the cross terms between units and between the connections that share a
    weight (the paper drops them to save 1998's compute): a shared weight (convolution kernel,
    subsampling coefficient) gets the second derivative over all its connections, summed, since
    it is accumulated per parameter. Parameters not yet estimated use h_kk = 0 (step lr/mu).
    ``weight_decay`` adds ``weight_decay * w`` to the gradient (the paper uses none).
    """

    add_param_group = _unwrapped(Optimizer.add_param_group)
    zero_grad = _unwrapped(Optimizer.zero_grad)
    state_dict = _unwrapped(Optimizer.state_dict)
    load_state_dict = _unwrapped(Optimizer.load_state_dict)

    def __init__(self, params, lr: float = 5e-4, mu: float = 0.02, weight_decay: float = 0.0):
        if lr <= 0 or mu <= 0 or weight_decay < 0:
            raise ValueError(
                f"SDLM needs lr > 0, mu > 0, weight_decay >= 0 (got {lr}, {mu}, {weight_decay})"
            )
        super().__init__(params, dict(lr=lr, mu=mu, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient (``closure`` is not supported)."""
        if closure is not None:
            raise NotImplementedError("SDLM takes no closure: call the closure, then step()")
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                h = self.state[p].get("hessian")
                if h is None:
                    p.add_(grad, alpha=-group["lr"] / group["mu"])
                else:
                    p.addcdiv_(grad, h + group["mu"], value=-group["lr"])

    def estimate_diagonal(
        self,
        model: torch.nn.Module,
        inputs: torch.Tensor,
        logits_fn=None,
        squared_input: str | None = None,
        chunk: int = 32,
    ) -> None:
        """(Re)estimate every parameter's h_kk on ``inputs`` (N, ...): the mean over the N
        images of the Gauss-Newton diagonal (see the class docstring), stored as
        ``state[p]["hessian"]``. ``model`` is run in eval mode (dropout off, batch norm on its
        running statistics: one image at a time has no batch); ``logits_fn`` maps the model's
        output to the logits the cross-entropy sees (e.g. the MAP loss's extra rubbish class).

        ``squared_input`` names a submodule whose input ``x`` the loss compares to a target by a
        squared distance (lenet5-1998's RBF output: the MAP loss's y_D = ||x - w_D||^2, a squared
        error on F6). Its curvature 2 I in ``x`` is the paper's second derivative at F6 (the
        RBF's own second derivative, which a Gauss-Newton split at the logits would drop), and
        it is added: ``2 * sum_j (dx_j/dw_k)^2``, estimated with one fixed random +-1 probe per
        image (``2 * (v . dx/dw_k)^2`` has that expectation; exact for a weight feeding one unit
        of ``x``, such as F6's), at the cost of one more Jacobian row instead of ``len(x)``."""
        from torch.func import functional_call, jacrev, vmap

        mine = {p for group in self.param_groups for p in group["params"]}
        params = {n: p.detach() for n, p in model.named_parameters() if p in mine}
        owners = {n: p for n, p in model.named_parameters() if p in mine}
        buffers = dict(model.named_buffers())
        feats: list[torch.Tensor] = []  # the squared_input's input in the current call

        def outputs_one(pvals: dict, x: torch.Tensor, v: torch.Tensor):
            feats.clear()
            out = functional_call(model, (pvals, buffers), (x.unsqueeze(0),))  # (1, C)
            if logits_fn is not None:
                out = logits_fn(out)
            probe = (feats[-1].flatten() * v).sum() if feats else out.new_zeros(())
            return (out[0], probe), out[0]  # (C,) and () to differentiate, (C,) kept as aux

        hook = None
        if squared_input is not None:
            hook = model.get_submodule(squared_input).register_forward_pre_hook(
                lambda module, args: feats.append(args[0])
            )
        jac_fn = vmap(jacrev(outputs_one, has_aux=True), in_dims=(None, 0, 0))
        sums = {n: torch.zeros_like(p) for n, p in params.items()}
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                width = 0
                if hook is not None:  # the probe's length: one plain forward
                    with torch.no_grad():
                        model(inputs[:1])
                    width = feats[-1][0].numel()
                g = torch.Generator().manual_seed(0)  # fixed probes: the estimate is repeatable
                for i in range(0, len(inputs), chunk):
                    xb = inputs[i : i + chunk]
                    v = torch.randint(0, 2, (len(xb), width), generator=g) * 2.0 - 1.0
                    (jac, jprobe), z = jac_fn(params, xb, v.to(xb))  # jac[n]: (B, C, *shape)
                    prob = torch.softmax(z.detach(), dim=1).unsqueeze(2)  # (B, C, 1)
                    for n, J in jac.items():
                        J = J.detach().flatten(2)  # (B, C, P)
                        # diag(J^T (diag(p) - p p^T) J) = sum_c p_c J_c^2 - (sum_c p_c J_c)^2
                        d = (prob * J * J).sum(1) - (prob * J).sum(1).pow(2)  # (B, P)
                        if hook is not None:
                            d = d + 2 * jprobe[n].detach().flatten(1).pow(2)
                        sums[n] += d.sum(0).view_as(sums[n])
        finally:
            model.train(was_training)
            if hook is not None:
                hook.remove()
        for n, s in sums.items():
            self.state[owners[n]]["hessian"] = (s / max(len(inputs), 1)).clamp_(min=0)


# optimizer -> (our class, torch's class, the ATen kernel our class steps with)
_CLASSES = {
    "sgd": (FusedSGD, torch.optim.SGD, "_fused_sgd_"),
    "adam": (FusedAdam, torch.optim.Adam, "_fused_adam_"),
    "adamw": (FusedAdamW, torch.optim.AdamW, "_fused_adamw_"),
}
_NOT_HERE = (RuntimeError, TypeError, ValueError)  # what torch raises for fused=True it lacks


def build_optimizer(cfg: TrainConfig, params, device: torch.device) -> Optimizer:
    """SGD (with momentum), Adam or AdamW from the config, fused on CPU and CUDA where this torch
    has the kernels; else torch.optim's own (fused where it accepts that, else plain)."""
    params = list(params)
    if cfg.optimizer == "sdlm":
        return SDLM(params, lr=cfg.lr, mu=cfg.sdlm_mu, weight_decay=cfg.weight_decay)
    kw = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        kw["momentum"] = cfg.momentum
    ours, theirs, kernel = _CLASSES[cfg.optimizer]
    if device.type in ("cpu", "cuda") and hasattr(torch, kernel):
        for make in (ours, lambda p, **k: theirs(p, fused=True, **k)):
            try:  # torch < 2.4 has no CPU fused kernels (< 2.3 no fused SGD): it raises here
                return make(params, **kw)
            except _NOT_HERE:
                pass
    return theirs(params, **kw)  # other devices and older torch: torch's own step


def build_scheduler(
    cfg: TrainConfig, opt: Optimizer, steps_per_epoch: int
) -> tuple[torch.optim.lr_scheduler.LRScheduler | None, bool]:
    """The LR schedule and whether it steps per batch (True) or per epoch (False)."""
    from torch.optim import lr_scheduler

    if cfg.scheduler == "paper":  # the 1998 paper's eta per pass, scaled so pass 1 is --lr
        first = paper_eta(0)
        return lr_scheduler.LambdaLR(opt, lambda epoch: paper_eta(epoch) / first), False
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
