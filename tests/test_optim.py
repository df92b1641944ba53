"""lenet.optim's fused optimizers against torch.optim, their refusals, and the fallback."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lenet import optim
from lenet.config import TrainConfig

# name -> (ours, torch's, options)
CASES = {
    "sgd": (optim.FusedSGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    "sgd-no-momentum": (optim.FusedSGD, torch.optim.SGD, dict(lr=0.05, weight_decay=1e-3)),
    "adam": (optim.FusedAdam, torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-3)),
    "adamw": (optim.FusedAdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
}


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 10),
    )


def _batches(n: int = 20):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))
        for _ in range(n)
    ]


def _train(model, opt, batches) -> None:
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _same_params(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (k, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=k)


def _torch_has_fused(cls) -> bool:
    try:
        cls(_model().parameters(), lr=0.1, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


@pytest.mark.parametrize("fused", [False, True], ids=["torch-plain", "torch-fused"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch_optim_over_20_steps(case, fused):
    ours_cls, theirs_cls, kw = CASES[case]
    if fused and not _torch_has_fused(theirs_cls):
        pytest.skip("this torch has no CPU fused kernel for it")
    kernel = {optim.FusedSGD: "_fused_sgd_", optim.FusedAdam: "_fused_adam_"}
    if not hasattr(torch, kernel.get(ours_cls, "_fused_adamw_")):
        pytest.skip("this torch lacks the kernel our class steps with")
    a, b = _model(), _model()
    ours, theirs = ours_cls(a.parameters(), **kw), theirs_cls(b.parameters(), fused=fused, **kw)
    batches = _batches()
    _train(a, ours, batches)
    _train(b, theirs, batches)
    _same_params(a, b)


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_round_trips_both_ways(case):
    ours_cls, theirs_cls, kw = CASES[case]
    batches = _batches(20)
    # ours for 10 steps -> torch.optim for 10, against torch.optim for 20 (and the other way).
    for first, second in ((ours_cls, theirs_cls), (theirs_cls, ours_cls)):
        ref = _model()
        ref_opt = theirs_cls(ref.parameters(), **kw)
        _train(ref, ref_opt, batches)
        m = _model()
        opt1 = first(m.parameters(), **kw)
        _train(m, opt1, batches[:10])
        opt2 = second(m.parameters(), **kw)
        opt2.load_state_dict(opt1.state_dict())
        _train(m, opt2, batches[10:])
        _same_params(m, ref)


@pytest.mark.parametrize("case", ["sgd", "adam"])
def test_a_closure_is_refused(case):
    ours_cls, _, kw = CASES[case]
    m = _model()
    opt = ours_cls(m.parameters(), **kw)
    with pytest.raises(NotImplementedError, match="closure"):
        opt.step(lambda: F.cross_entropy(m(torch.randn(2, 1, 8, 8)), torch.tensor([0, 1])))


@pytest.mark.parametrize(
    "cls,option",
    [
        (optim.FusedAdam, dict(amsgrad=True)),
        (optim.FusedAdamW, dict(maximize=True)),
        (optim.FusedAdam, dict(capturable=True)),
        (optim.FusedSGD, dict(momentum=0.9, nesterov=True)),
        (optim.FusedSGD, dict(momentum=0.9, dampening=0.1)),
        (optim.FusedAdam, dict(lr=torch.tensor(0.01))),
    ],
)
def test_options_the_fused_step_lacks_are_refused(cls, option):
    with pytest.raises(ValueError, match="does not support"):
        cls(_model().parameters(), **{"lr": 0.01, **option})


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_build_uses_the_fused_classes_where_torch_has_the_kernels(name):
    opt = optim.build_optimizer(
        TrainConfig(optimizer=name), _model().parameters(), torch.device("cpu")
    )
    ours, _, kernel = optim._CLASSES[name]
    if hasattr(torch, kernel) and _torch_has_fused(optim._CLASSES[name][1]):
        assert type(opt) is ours


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_build_falls_back_to_torch_optim_without_the_kernels(name, monkeypatch):
    _, theirs, kernel = optim._CLASSES[name]
    monkeypatch.delattr(torch, kernel, raising=False)
    m = _model()
    opt = optim.build_optimizer(TrainConfig(optimizer=name), m.parameters(), torch.device("cpu"))
    assert type(opt) is theirs
    before = [p.detach().clone() for p in m.parameters()]
    _train(m, opt, _batches(3))
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))


def test_build_falls_back_when_construction_fails(monkeypatch):
    # As on torch < 2.4, where torch refuses fused=True for CPU parameters.
    def refuse(*args, **kwargs):
        raise RuntimeError("fused=True requires CUDA parameters")

    monkeypatch.setattr(optim.FusedAdam, "__init__", refuse)
    real_adam_init = torch.optim.Adam.__init__

    def no_fused(self, params, *args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("no CPU fused kernel")
        real_adam_init(self, params, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "__init__", no_fused)
    m = _model()
    opt = optim.build_optimizer(TrainConfig(optimizer="adam"), m.parameters(), torch.device("cpu"))
    assert type(opt) is torch.optim.Adam and not opt.param_groups[0]["fused"]
    _train(m, opt, _batches(2))
