"""The authors' key layout (semckd.interop): export, import, cross-load with the reference, refusals."""

from __future__ import annotations

import pytest
import torch

from benchmarks.reference import ReferenceSemCKD
from semckd.criterion import SemCKD
from semckd.interop import load_official_state_dict, official_state_dict


def feats(B: int, shapes: list[tuple[int, int, int]], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, *s, generator=g).relu() for s in shapes]


def randomized(s_ch: list[int], t_ch: list[int], batch_size: int) -> SemCKD:
    """A criterion with non-trivial BN statistics and affine parameters, so a cross-load checks them."""
    torch.manual_seed(0)
    m = SemCKD(s_ch, t_ch, batch_size=batch_size)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in [*m.named_buffers(), *m.named_parameters()]:
            if name.endswith(("running_mean", ".1.bias", ".4.bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith(("running_var", ".1.weight", ".4.weight")):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return m


def test_official_layout_round_trip_and_cross_load() -> None:
    m = randomized([4, 8], [6, 5, 3], 8)
    sd = official_state_dict(m)
    assert {"query_weight0.linear1.weight", "query_weight1.linear2.bias", "key_weight2.linear1.weight",
            "regressor12.regressor.0.weight", "regressor12.regressor.1.running_var",
            "regressor01.regressor.4.num_batches_tracked", "regressor10.regressor.6.weight"} <= set(sd)
    assert not any(k.startswith(("query.", "key.", "projectors.")) for k in sd)
    assert sd["query_weight0.linear1.weight"].shape == (4, 8)  # Linear(batch 8 → 2·(8 // 4))
    assert sd["regressor12.regressor.3.weight"].shape == (6, 6, 3, 3)
    ref = ReferenceSemCKD([4, 8], [6, 5, 3], batch_size=8)
    load_official_state_dict(ref, sd)
    fs, ft = feats(8, [(4, 4, 4), (8, 2, 2)], 1), feats(8, [(6, 4, 4), (5, 2, 2), (3, 2, 2)], 2)
    m.eval()
    ref.eval()
    (l1, a1), (l2, a2) = m(fs, ft), ref(fs, ft)
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(l1, l2)
    back = official_state_dict(ref)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    ddp = {"module." + k: v for k, v in sd.items()}  # a DDP-saved dict loads too
    load_official_state_dict(SemCKD([4, 8], [6, 5, 3], batch_size=8), ddp)


def test_official_layout_rejects_mismatched_dicts() -> None:
    m = SemCKD([4, 8], [6, 5], batch_size=8)
    good = official_state_dict(m)
    missing = {k: v for k, v in good.items() if k != "regressor11.regressor.4.running_mean"}
    with pytest.raises(ValueError, match="missing key 'regressor11.regressor.4.running_mean'"):
        load_official_state_dict(m, missing)
    with pytest.raises(ValueError, match="unexpected key 'regressor22.regressor.0.weight'"):
        load_official_state_dict(m, {**good, "regressor22.regressor.0.weight": torch.zeros(1)})
    wrong = dict(good)
    wrong["query_weight1.linear1.weight"] = torch.zeros(4, 16)  # trained at batch size 16
    with pytest.raises(ValueError, match=r"'query_weight1.linear1.weight' has shape \(4, 16\)"):
        load_official_state_dict(m, wrong)
    with pytest.raises(ValueError, match="missing key 'query_weight0"):
        load_official_state_dict(m, m.state_dict())  # our own layout is not the official one
    with pytest.raises(ValueError, match="state dict"):
        load_official_state_dict(m, [1, 2])  # type: ignore[arg-type]
    # nothing was half-loaded by the failed attempts
    assert all(torch.equal(v, good[k]) for k, v in official_state_dict(m).items())


def test_official_layout_past_ten_layers() -> None:
    # 11 × 3: names like regressor100 (10, 0) and regressor10 (1, 0) are distinct → representable
    m = SemCKD([2] * 11, [3, 4, 5], batch_size=4, factor=2)
    sd = official_state_dict(m)
    assert "regressor100.regressor.0.weight" in sd and "regressor10.regressor.0.weight" in sd
    assert sd["regressor100.regressor.6.weight"].shape == (3, 6, 1, 1)
    assert sd["regressor12.regressor.6.weight"].shape == (5, 10, 1, 1)
    other = SemCKD([2] * 11, [3, 4, 5], batch_size=4, factor=2)
    load_official_state_dict(other, sd)
    assert all(torch.equal(v, sd[k]) for k, v in official_state_dict(other).items())
    # 12 × 11: (1, 10) and (11, 0) would both be 'regressor110' → refused in both directions
    amb = SemCKD([2] * 12, [2] * 11, batch_size=4, factor=2)
    with pytest.raises(ValueError, match="regressor110"):
        official_state_dict(amb)
    with pytest.raises(ValueError, match="ambiguous"):
        load_official_state_dict(amb, sd)
    amb.load_state_dict(amb.state_dict())  # our own nested layout has no such problem
