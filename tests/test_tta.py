"""hpa_kit.tta: views on non-square batches, inverse pairs, aggregation."""

from __future__ import annotations

import itertools

import pytest
import torch

from hpa_kit.tta import INVERSE, TTA_SETS, VIEWS, apply_view, invert_view, resolve_tta, tta_predict


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on the shared 2-core machine, 2 threads are ~20x slower here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batch(seed: int = 0, shape=(2, 3, 5, 7)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class _PoolLinear(torch.nn.Module):
    """Global mean pool then a linear layer: invariant to every flip and rotation."""

    def __init__(self, channels: int = 3, classes: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(x.mean(dim=(-2, -1)))


class _Corner(torch.nn.Module):
    """Logit = top-left pixel of channel 0 (not invariant to anything)."""

    def forward(self, x):
        return x[:, :1, 0, 0]


def test_literal_flips_and_rotations():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)  # [[0, 1, 2], [3, 4, 5]]
    view = {v: apply_view(x, v)[0, 0].tolist() for v in INVERSE}
    assert view["identity"] == [[0, 1, 2], [3, 4, 5]]
    assert view["hflip"] == [[2, 1, 0], [5, 4, 3]]
    assert view["vflip"] == [[3, 4, 5], [0, 1, 2]]
    assert view["rot90"] == [[2, 5], [1, 4], [0, 3]]
    assert view["rot180"] == [[5, 4, 3], [2, 1, 0]]
    assert view["rot270"] == [[3, 0], [4, 1], [5, 2]]
    assert view["transpose"] == [[0, 3], [1, 4], [2, 5]]
    assert view["antitranspose"] == [[5, 2], [4, 1], [3, 0]]


@pytest.mark.parametrize("view", list(INVERSE))
def test_inverse_round_trip_non_square(view):
    x = _batch(1, (2, 3, 5, 7))
    y = apply_view(x, view)
    expected_hw = (7, 5) if view in ("rot90", "rot270", "transpose", "antitranspose") else (5, 7)
    assert tuple(y.shape[-2:]) == expected_hw
    torch.testing.assert_close(invert_view(y, view), x, rtol=0, atol=0)


@pytest.mark.parametrize("view", ["hflip", "vflip", "rot180", "transpose", "antitranspose"])
def test_reflections_are_involutions(view):
    x = _batch(2, (1, 2, 4, 9))
    torch.testing.assert_close(apply_view(apply_view(x, view), view), x, rtol=0, atol=0)


def test_d4_views_distinct_and_closed():
    x = _batch(3, (1, 1, 4, 4))
    views = {v: apply_view(x, v) for v in TTA_SETS["d4"]}
    assert len(views) == 8
    for a, b in itertools.combinations(views.values(), 2):
        assert not torch.equal(a, b)
    # Closed under composition: every composite of two views is one of the eight.
    for a, b in itertools.product(TTA_SETS["d4"], repeat=2):
        composed = apply_view(apply_view(x, a), b)
        assert any(torch.equal(composed, v) for v in views.values()), (a, b)


def test_scale_views_keep_shape_and_pad_with_fill():
    x = torch.ones(2, 3, 10, 15)
    small = apply_view(x, "scale0.8", fill=(-1.0, -2.0, -3.0))
    assert small.shape == x.shape
    # 10 x 15 -> 8 x 12, centred: rows 1..8 (1 padded row above, 1 below), columns 1..12
    # ((15 - 12) // 2 = 1 padded column left, 2 right).
    torch.testing.assert_close(small[:, :, 1:9, 1:13], torch.ones(2, 3, 8, 12))
    assert torch.all(small[:, 0, 0, :] == -1.0) and torch.all(small[:, 2, :, 13:] == -3.0)
    assert torch.all(small[:, 1, 9, :] == -2.0) and torch.all(small[:, 1, :, 0] == -2.0)
    big = apply_view(x, "scale1.2")
    assert big.shape == x.shape
    torch.testing.assert_close(big, x)  # a constant image stays constant when cropped


def test_scale_up_is_centre_crop():
    # A 10 x 20 ramp along columns; x1.2 -> 12 x 24 then columns 2..22 kept: the centre
    # column value is unchanged and the ends move outwards.
    ramp = torch.arange(20.0).repeat(10, 1)[None, None]
    big = apply_view(ramp, "scale1.2")
    assert big.shape == ramp.shape
    assert big[0, 0, 5, 0] > ramp[0, 0, 5, 0] and big[0, 0, 5, -1] < ramp[0, 0, 5, -1]
    torch.testing.assert_close(
        big[0, 0, :, 9:11].mean(), ramp[0, 0, :, 9:11].mean(), atol=0.05, rtol=0
    )


def test_scale_has_no_inverse_and_unknown_views_fail():
    with pytest.raises(ValueError, match="no inverse"):
        invert_view(_batch(), "scale0.8")
    with pytest.raises(ValueError, match="unknown TTA view"):
        apply_view(_batch(), "rot45")
    with pytest.raises(ValueError, match="unknown TTA set"):
        resolve_tta("d8")
    with pytest.raises(ValueError, match="subset"):
        resolve_tta(["identity", "rot45"])
    with pytest.raises(ValueError, match="fill"):
        apply_view(_batch(), "scale0.8", fill=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        apply_view(torch.zeros(3, 4, 4), "hflip")


def test_sets():
    assert resolve_tta("none") == ("identity",)
    assert resolve_tta("seed") == ("identity", "hflip", "vflip", "scale0.8", "scale1.2")
    assert len(set(resolve_tta("d4"))) == 8
    assert set(VIEWS) >= set(itertools.chain(*TTA_SETS.values()))


@pytest.mark.parametrize("tta", ["none", "d4"])
def test_rotation_invariant_model_same_probs(tta):
    model = _PoolLinear().eval()
    x = _batch(4, (3, 3, 6, 11))
    probs = tta_predict(model, x, tta=tta)
    assert probs.shape == (3, 4) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, torch.sigmoid(model(x)).detach(), rtol=1e-5, atol=1e-6)


def test_aggregation_is_mean_of_sigmoids():
    model = _Corner()
    x = torch.zeros(1, 1, 3, 4)
    x[0, 0, 0, 0] = 2.0  # identity sees 2
    x[0, 0, 0, 3] = -1.0  # hflip sees -1
    x[0, 0, 2, 0] = 0.5  # vflip sees 0.5
    probs = tta_predict(model, x, tta=["identity", "hflip", "vflip"])
    expected = (
        torch.sigmoid(torch.tensor(2.0))
        + torch.sigmoid(torch.tensor(-1.0))
        + torch.sigmoid(torch.tensor(0.5))
    ) / 3
    torch.testing.assert_close(probs[0, 0], expected)


def test_seed_tta_on_non_square_batch_runs_a_timm_model():
    import timm

    model = timm.create_model(
        "test_efficientnet", pretrained=False, in_chans=4, num_classes=19
    ).eval()
    x = _batch(5, (2, 4, 40, 56))
    probs = tta_predict(model, x, tta="seed", fill=[-0.5, -0.5, -0.3, -0.3])
    assert probs.shape == (2, 19)
    assert torch.all((probs > 0) & (probs < 1))
    # The mean of the views equals the mean computed by hand.
    with torch.inference_mode():
        views = [
            torch.sigmoid(model(apply_view(x, v, fill=[-0.5, -0.5, -0.3, -0.3])))
            for v in TTA_SETS["seed"]
        ]
    torch.testing.assert_close(probs, torch.stack(views).mean(0))


def test_bad_model_output():
    with pytest.raises(ValueError, match="logits"):
        tta_predict(lambda x: x.mean(), _batch(), tta="none")
