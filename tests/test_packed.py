"""oneDNN-packed linear layers: same products as F.linear, row results independent of the batch, restored after."""

import pytest
import torch
from torch import nn

import tunelab.evaluate.packed as packed
from tunelab.evaluate.packed import packed_linears

pytestmark = pytest.mark.skipif(not packed._available(), reason="this torch build has no oneDNN linear ops")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 192), nn.SiLU(), nn.Linear(192, 64, bias=False), nn.Linear(64, 1000))


def test_packed_layers_compute_what_linear_computes_and_are_restored():
    net, x = _net(), torch.randn(5, 3, 64)
    with torch.no_grad():
        plain = net(x)
        with packed_linears(net):
            assert all("forward" in vars(m) for m in net if isinstance(m, nn.Linear))
            fast = net(x)
        after = net(x)
    assert torch.allclose(fast, plain, atol=1e-4, rtol=1e-4) and not torch.equal(fast, torch.zeros_like(fast))
    assert torch.equal(after, plain)  # the original forwards are back
    assert not any("forward" in vars(m) for m in net)


def test_a_row_gets_the_same_result_alone_or_in_any_batch():
    net, x = _net(), torch.randn(40, 64)
    with torch.no_grad(), packed_linears(net):
        full = net(x)
        for rows in (1, 2, 7, 16, 33):
            assert torch.equal(net(x[:rows]), full[:rows]), rows


def test_nothing_is_packed_when_the_copies_would_not_fit(monkeypatch):
    net = _net()
    monkeypatch.setattr(packed, "FREE_MEMORY_SHARE", 0.0)
    with packed_linears(net):
        assert not any("forward" in vars(m) for m in net)


def test_forwards_are_restored_when_the_block_raises():
    net = _net()
    with pytest.raises(RuntimeError, match="boom"):
        with packed_linears(net):
            raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in net)
