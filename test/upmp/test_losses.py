"""The loss heads' margin: loss_conf.margin_schedule's values at given steps (hand-computed), and
set_margin acting like a head built with that margin."""
import math

import pytest
import torch

from upmp.losses import build_loss, scheduled_margin
from upmp.train.schema import MarginScheduleConf, check_train_config


def conf(shape, start_step=10, end_step=18, start_margin=0.0):
    return MarginScheduleConf(shape, start_step, end_step, start_margin)


def loss_conf(loss, **keys):
    """The typed loss_conf of these keys, the others at their defaults (upmp.train.schema)."""
    return check_train_config({"loss": loss, "loss_conf": keys, "train_conf": {"steps": 100}}).loss_conf


@pytest.mark.parametrize("shape, expected", [
    # steps 0, 10 (start), 12 (p 1/4), 14 (p 1/2), 17 (p 7/8), 18 (end), 500
    ("linear", [0.0, 0.0, 0.05, 0.1, 0.175, 0.2, 0.2]),
    # 0.2 (1 - 0.001^p) / 0.999: 0.001^(1/4) = 0.177827941, 0.001^(1/2) = 0.0316227766, 0.001^(7/8) = 0.00237137371
    ("exp", [0.0, 0.0, 0.16459901, 0.19386931, 0.19972545, 0.2, 0.2]),
    # 0.1 (1 - cos(pi p)): cos(pi/4) = 0.707106781, cos(pi/2) = 0, cos(7 pi/8) = -0.923879533
    ("cos", [0.0, 0.0, 0.02928932, 0.1, 0.19238795, 0.2, 0.2]),
    ("none", [0.2] * 7),
])
def test_schedule_values(shape, expected):
    got = [scheduled_margin(conf(shape), 0.2, s) for s in (0, 10, 12, 14, 17, 18, 500)]
    assert got == pytest.approx(expected, abs=1e-8)


def test_schedule_from_a_nonzero_start_margin_and_without_a_schedule():
    assert scheduled_margin(conf("linear", 0, 4, start_margin=0.1), 0.3, 1) == pytest.approx(0.15)
    assert scheduled_margin(MarginScheduleConf(), 0.35, 0) == 0.35  # the default: no schedule


@pytest.mark.parametrize("loss", ["aamsoftmax", "aamsoftmax_subcenter_topk"])
def test_set_margin_equals_a_head_built_with_that_margin(loss):
    torch.manual_seed(0)
    x, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    a = build_loss(loss, 8, 7, loss_conf(loss, margin=0.2, heads=2))
    b = build_loss(loss, 8, 7, loss_conf(loss, margin=0.05, heads=2))
    b.load_state_dict(a.state_dict())
    before = a(x, labels)[0]
    a.set_margin(0.05)
    torch.testing.assert_close(a(x, labels)[0], b(x, labels)[0], rtol=0, atol=0)
    assert not math.isclose(before.item(), b(x, labels)[0].item())
    # a scheduled head starts at its step-0 margin
    c = build_loss(loss, 8, 7, loss_conf(loss, margin=0.2, heads=2, margin_schedule={"shape": "linear", "end_step": 10}))
    assert all(h.m == 0.0 for h in c.heads)


def test_subcenter_topk_margin_penalises_the_hard_negatives():
    """loss_conf.topk_margin acts: the top-k hardest negative classes' logits become
    s cos(theta - mp) (mp = topk_margin x margin / 0.2), computed here by hand from the weights."""
    torch.manual_seed(0)
    x, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    on = build_loss("aamsoftmax_subcenter_topk", 8, 7, loss_conf("aamsoftmax_subcenter_topk", margin=0.2, subcenters=2,
                                                                 topk=2, topk_margin=0.06))
    off = build_loss("aamsoftmax_subcenter_topk", 8, 7, loss_conf("aamsoftmax_subcenter_topk", margin=0.2, subcenters=2,
                                                                  topk=2, topk_margin=0.0))
    off.load_state_dict(on.state_dict())
    head = on.heads[0]
    assert head.cos_mp == pytest.approx(math.cos(0.06)) and off.heads[0].cos_mp == 1.0
    cos = torch.nn.functional.linear(torch.nn.functional.normalize(x), torch.nn.functional.normalize(head.weight))
    cos = cos.view(6, 7, 2).amax(dim=2).clamp(-1, 1)
    theta = torch.acos(cos)
    target = torch.nn.functional.one_hot(labels, 7).bool()
    logits = torch.where(target, torch.cos(theta + 0.2), cos)
    hard = cos.masked_fill(target, -2).topk(2, dim=1).indices
    is_hard = torch.zeros_like(target).scatter_(1, hard, True)
    want_on = torch.nn.functional.cross_entropy(30 * torch.where(is_hard, torch.cos(theta - 0.06), logits), labels)
    want_off = torch.nn.functional.cross_entropy(30 * logits, labels)
    assert on(x, labels)[0].item() == pytest.approx(want_on.item(), rel=1e-5)
    assert off(x, labels)[0].item() == pytest.approx(want_off.item(), rel=1e-5)
    assert want_on.item() > want_off.item()
