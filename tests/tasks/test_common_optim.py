"""The shared optimizer / schedule factory against PyTorch's own schedulers."""

import math

import pytest
import torch
from torch import nn

from tasks.common.optim import build_optimizer, build_schedule, check_options, parameter_groups, warmup_steps


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def _lrs(optimizer, scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_norms_and_biases_get_no_weight_decay():
    net = _net()
    decay, no_decay = parameter_groups(net, 0.1)
    assert {id(p) for p in decay["params"]} == {id(net[0].weight), id(net[2].weight)}
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0  # two biases, BN weight and bias


@pytest.mark.parametrize(
    "name, cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)]
)
def test_every_optimizer_keeps_the_two_groups(name, cls):
    optimizer = build_optimizer(_net(), name, lr=0.1, weight_decay=0.01, momentum=0.9)
    assert isinstance(optimizer, cls) and [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]


def test_one_cycle_is_pytorchs():
    a, b = _net(), _net()
    ours = build_optimizer(a, "adamw", 0.01, 0.0, 0.9)
    ref = torch.optim.AdamW(b.parameters(), lr=0.01)
    got = _lrs(ours, build_schedule(ours, "one_cycle", 20), 20)
    want = _lrs(ref, torch.optim.lr_scheduler.OneCycleLR(ref, max_lr=0.01, total_steps=20), 20)
    assert got == pytest.approx(want)


def test_poly_matches_polynomiallr_and_warmup_ramps_linearly():
    net = _net()
    optimizer = build_optimizer(net, "sgd", 0.1, 0.0, 0.9)
    ref_opt = torch.optim.SGD(_net().parameters(), lr=0.1)
    ref = torch.optim.lr_scheduler.PolynomialLR(ref_opt, total_iters=10, power=0.9)
    assert _lrs(optimizer, build_schedule(optimizer, "poly", 10), 10) == pytest.approx(_lrs(ref_opt, ref, 10))
    optimizer = build_optimizer(net, "sgd", 0.1, 0.0, 0.9)
    lrs = _lrs(optimizer, build_schedule(optimizer, "cosine", 12, warmup=3), 12)
    assert lrs[:3] == pytest.approx([0.025, 0.05, 0.075])
    assert lrs[3:] == pytest.approx([0.05 * (1 + math.cos(math.pi * s / 9)) for s in range(9)])


def test_warmup_steps_and_bad_options():
    assert warmup_steps(0.3, total_steps=400, epochs=5) == 24
    assert warmup_steps(10, total_steps=5, epochs=1) == 4  # at least one step of the schedule is left
    for args, message in [(("adam", "poly", 0), "unknown optimizer"), (("sgd", "step", 0), "unknown schedule"),
                          (("sgd", "one_cycle", 1), "own warm-up"), (("sgd", "poly", -1), ">= 0")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            check_options(*args)
