"""Tests of the refinement model: config, network shapes/dtypes/layouts, guided upsampling,
and safetensors-only save/load."""
from __future__ import annotations

import json
import re

import pytest
import torch

from sddr_pipeline.models import (
    PRESETS,
    Refiner,
    RefinerConfig,
    RefinerOutput,
    RefinerWeightsError,
    SDDRNet,
)
from sddr_pipeline.models.upsample import area_resize, box_filter, guided_upsample


@pytest.fixture(scope="module")
def small() -> Refiner:
    return Refiner.from_config("sddr-small", seed=0)


def _inputs(h: int, w: int, b: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, h)[:, None].expand(h, w)
    low = (ys + 0.05 * torch.rand(b, 1, h, w, generator=g)).clamp(0, 1)
    high = (low + 0.2 * (torch.rand(b, 1, h, w, generator=g) > 0.9).float()).clamp(0, 1)
    return low, high


def _ceil(n: int, d: int) -> int:
    return -(-n // d)


# --- config -------------------------------------------------------------------------------

def test_config_round_trip_and_presets() -> None:
    for name, cfg in PRESETS.items():
        assert cfg.name == name
        again = RefinerConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg
        assert RefinerConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    "changes",
    [
        {"stem_channels": (8, 16)},
        {"mit_hidden_sizes": (32, 64, 160, 0)},
        {"mit_num_heads": (3, 2, 5, 8)},
        {"decoder_channels": (1, 2, 3)},
        {"interaction_heads": 7},
        {"max_side": 64},
        {"guided_eps": 0.0},
        {"guided_radius": 0},
        {"depthwise": "yes"},
        {"interaction_layers": -1},
        {"name": ""},
    ],
)
def test_config_rejects_bad_values(changes: dict) -> None:
    with pytest.raises(ValueError):
        PRESETS["sddr-small"].replace(**changes)


@pytest.mark.parametrize("key, value, message", [
    ("interaction_ffn", 10**12, "interaction_ffn must be at most 16384, got 1000000000000"),
    ("decoder_channels", (96, 64, 48, 32, 16, 12, 10**9), "decoder_channels must be at most 2048, got (96, 64, 48, 32, 16, 12, 1000000000)"),
    ("mit_depths", (1, 1, 1, 100), "mit_depths must be at most 32, got (1, 1, 1, 100)"),
    ("max_side", 10**6, "max_side must be at most 16384, got 1000000"),
])
def test_config_refuses_huge_sizes_by_name(key: str, value, message: str, tmp_path) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        PRESETS["sddr-small"].replace(**{key: value})
    data = PRESETS["sddr-small"].to_dict() | {key: list(value) if isinstance(value, tuple) else value}
    (tmp_path / "config.json").write_text(json.dumps(data))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / 'config.json'))}: {re.escape(message)}$"):
        Refiner.from_pretrained(tmp_path)


def test_config_rejects_unknown_keys() -> None:
    data = PRESETS["sddr-small"].to_dict() | {"bogus": 1}
    with pytest.raises(ValueError, match="bogus"):
        RefinerConfig.from_dict(data)


# --- guided upsampling (exact expectations) --------------------------------------------------

def test_box_filter_matches_brute_force() -> None:
    x = torch.rand(2, 3, 7, 9, dtype=torch.float64)
    r = 2
    expected = torch.empty_like(x)
    for i in range(7):
        for j in range(9):
            win = x[..., max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1]
            expected[..., i, j] = win.mean(dim=(-2, -1))
    torch.testing.assert_close(box_filter(x, r), expected, rtol=0, atol=1e-12)
    c = torch.full((1, 1, 5, 4), 0.7, dtype=torch.float64)
    torch.testing.assert_close(box_filter(c, 3), c, rtol=0, atol=1e-15)
    assert box_filter(x, 0) is x


def test_guided_upsample_constant_target() -> None:
    guide_lr = torch.rand(1, 1, 16, 24)
    guide_hr = torch.rand(1, 1, 40, 60)
    target = torch.full((1, 1, 16, 24), 0.3)
    out = guided_upsample(target, guide_lr, guide_hr, radius=2, eps=1e-4)
    assert out.shape == (1, 1, 40, 60)
    torch.testing.assert_close(out, torch.full_like(out, 0.3), rtol=0, atol=1e-6)


def test_guided_upsample_reproduces_affine_function_of_guide() -> None:
    guide_hr = torch.rand(2, 1, 64, 96, dtype=torch.float64)
    guide_lr = area_resize(guide_hr, (32, 48))
    out = guided_upsample(guide_lr, guide_lr, guide_hr, radius=2, eps=1e-12)
    torch.testing.assert_close(out, guide_hr, rtol=0, atol=1e-6)
    out = guided_upsample(2 * guide_lr + 3, guide_lr, guide_hr, radius=1, eps=1e-12)
    torch.testing.assert_close(out, 2 * guide_hr + 3, rtol=0, atol=1e-6)


def test_guided_upsample_validates_shapes() -> None:
    with pytest.raises(ValueError):
        guided_upsample(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 9, 8), torch.rand(1, 1, 16, 16), 1, 1e-3)
    with pytest.raises(ValueError):
        guided_upsample(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), torch.rand(2, 1, 16, 16), 1, 1e-3)


# --- network --------------------------------------------------------------------------------

def test_paper_preset_parameter_count() -> None:
    net = SDDRNet(PRESETS["sddr-paper"])
    n = sum(p.numel() for p in net.parameters())
    print(f"sddr-paper parameters: {n / 1e6:.3f} M (paper: 16.8 M)")
    assert abs(n - 16.8e6) / 16.8e6 < 0.10


@pytest.mark.parametrize("size", [(97, 203), (300, 1100), (16, 16)])
def test_output_shapes_any_size(small: Refiner, size: tuple[int, int]) -> None:
    h, w = size
    low, high = _inputs(h, w, b=2)
    out = small(low, high)
    assert isinstance(out, RefinerOutput)
    m = small.config.max_side
    nh, nw = (h, w) if max(h, w) <= m else (round(h * m / max(h, w)), round(w * m / max(h, w)))
    assert out.depth.shape == out.omega.shape == (2, 1, h, w)
    assert out.side2.shape == out.omega2.shape == (2, 1, _ceil(nh, 2), _ceil(nw, 2))
    assert out.side4.shape == out.omega4.shape == (2, 1, _ceil(nh, 4), _ceil(nw, 4))
    for t in out:
        assert torch.isfinite(t).all()
    for omega in (out.omega, out.omega2, out.omega4):
        assert omega.min() >= 0 and omega.max() <= 1


def test_hw_input_gives_hw_output(small: Refiner) -> None:
    low, high = _inputs(40, 50)
    out = small(low[0, 0], high[0, 0])
    assert out.depth.shape == (40, 50) and out.side2.shape == (20, 25)
    torch.testing.assert_close(out.depth, small(low, high).depth[0, 0])
    with pytest.raises(ValueError):
        small(low[0], high[0])


def test_paper_preset_runs() -> None:
    refiner = Refiner.from_config("sddr-paper")
    out = refiner(*_inputs(97, 203))
    assert out.depth.shape == (1, 1, 97, 203)
    assert all(torch.isfinite(t).all() for t in out)


def test_low_precision(small: Refiner) -> None:
    low, high = _inputs(64, 80)
    ref = small(low, high)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = small(low, high)
    assert (auto.depth.float() - ref.depth).abs().max() < 0.05
    for dtype in (torch.bfloat16, torch.float16):
        refiner = Refiner.from_config("sddr-small", seed=0).to(dtype=dtype)
        out = refiner(low, high)
        assert out.depth.dtype == dtype
        assert all(torch.isfinite(t.float()).all() for t in out)
        assert (out.depth.float() - ref.depth).abs().max() < 0.05


def test_channels_last_matches_contiguous(small: Refiner) -> None:
    contiguous = SDDRNet(small.config).eval()
    contiguous.load_state_dict({k: v.contiguous() for k, v in small.net.state_dict().items()})
    assert small.net.head_out.weight.is_contiguous(memory_format=torch.channels_last)
    low, high = _inputs(300, 1000)
    with torch.inference_mode():
        a = contiguous(low, high)
    b = small(low, high)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_training_mode_backpropagates() -> None:
    refiner = Refiner.from_config("sddr-small", seed=1).train()
    low, high = _inputs(64, 64)
    out = refiner(low, high)
    (out.depth.mean() + out.side2.mean() + out.side4.mean() + out.omega2.mean()).backward()
    grads = [p.grad for p in refiner.net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert refiner.net.stem[0].conv1.weight.grad.abs().sum() > 0


def test_from_config_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = Refiner.from_config("sddr-small", seed=3).net.state_dict()
    b = Refiner.from_config(PRESETS["sddr-small"], seed=3).net.state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="unknown refiner preset"):
        Refiner.from_config("sddr-huge")


# --- save / load ----------------------------------------------------------------------------

def test_save_load_round_trip(small: Refiner, tmp_path) -> None:
    low, high = _inputs(97, 203)
    ref = small(low, high)
    exact = Refiner.from_pretrained(small.save_pretrained(tmp_path / "fp32", dtype=torch.float32))
    assert exact.dtype == torch.float32 and exact.config == small.config
    for x, y in zip(ref, exact(low, high)):
        assert torch.equal(x, y)
    folder = small.save_pretrained(tmp_path / "fp16")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    half = Refiner.from_pretrained(folder)
    assert half.dtype == torch.float32
    for x, y in zip(ref, half(low, high)):
        torch.testing.assert_close(x, y, rtol=0, atol=5e-3)
    single = Refiner.from_pretrained(folder / "model.safetensors")
    assert single.version == half.version
    assert half.version.startswith("sddr-small@") and len(half.version.split("@")[1]) == 12
    assert small.version == half.version


def test_small_preset_file_size(tmp_path) -> None:
    folder = Refiner.from_config("sddr-small").save_pretrained(tmp_path)
    size = (folder / "model.safetensors").stat().st_size
    print(f"sddr-small fp16 weights: {size / 1e6:.2f} MB")
    assert size <= 10 * 1024 * 1024


def test_missing_default_weights_say_how_to_pass_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("sddr_pipeline.models.refiner.DEFAULT_WEIGHTS_DIR", tmp_path / "gone")
    with pytest.raises(RefinerWeightsError, match="--weights PATH") as info:
        Refiner.from_pretrained("default")
    assert isinstance(info.value, FileNotFoundError)
    assert "bundled default weights are missing" in str(info.value)


def test_missing_path_and_preset_name(tmp_path) -> None:
    with pytest.raises(RefinerWeightsError, match="not found"):
        Refiner.from_pretrained(tmp_path / "nope")
    with pytest.raises(RefinerWeightsError, match="architecture preset"):
        Refiner.from_pretrained("sddr-small")


def test_pickle_files_are_refused(small: Refiner, tmp_path) -> None:
    pt = tmp_path / "model.pt"
    torch.save(small.net.state_dict(), pt)
    with pytest.raises(ValueError, match="only .safetensors"):
        Refiner.from_pretrained(pt)
    with pytest.raises(RefinerWeightsError, match="only safetensors"):
        Refiner.from_pretrained(tmp_path)
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(pt.read_bytes())
    with pytest.raises(ValueError, match="fake.safetensors"):
        Refiner.from_pretrained(fake)


def test_mismatched_weights_name_the_file(small: Refiner, tmp_path) -> None:
    folder = small.save_pretrained(tmp_path)
    other = PRESETS["sddr-small"].replace(decoder_channels=(96, 64, 48, 32, 16, 12, 12))
    (folder / "config.json").write_text(other.to_json())
    with pytest.raises(ValueError, match=r"model\.safetensors.*shape mismatches"):
        Refiner.from_pretrained(folder)
    (folder / "config.json").write_text(PRESETS["sddr-small"].replace(interaction_layers=3).to_json())
    with pytest.raises(ValueError, match="missing keys"):
        Refiner.from_pretrained(folder)


def test_pad_to_multiple_replicates_bottom_right_only() -> None:
    from sddr_pipeline.models.network import network_size, pad_to_multiple

    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    out = pad_to_multiple(x, 4)
    assert out.shape == (1, 1, 4, 4)
    assert torch.equal(out[..., :2, :3], x)
    assert out[0, 0].tolist() == [[0, 1, 2, 2], [3, 4, 5, 5], [3, 4, 5, 5], [3, 4, 5, 5]]
    same = torch.zeros(1, 1, 128, 256)
    assert pad_to_multiple(same, 128) is same
    assert network_size(300, 1000, 512) == (154, 512)
    assert network_size(97, 203, 512) == (97, 203)


def test_with_config_keeps_the_weights_and_refuses_shape_changes():
    from sddr_pipeline.bench.speed import preset_refiner

    refiner = Refiner.from_config("sddr-small", seed=3)
    other = refiner.with_config(head_scale=2, fusion_median=3)
    assert (other.config.head_scale, other.config.fusion_median) == (2, 3)
    assert other.config.replace(head_scale=1, fusion_median=5) == refiner.config
    for key, value in refiner.net.state_dict().items():
        assert torch.equal(other.net.state_dict()[key], value)
    with pytest.raises(ValueError, match="change the parameters"):
        refiner.with_config(head_channels=8)
    spec = preset_refiner("sddr-small+head_scale=4,fusion_median=1")
    assert (spec.config.name, spec.config.head_scale, spec.config.fusion_median) == ("sddr-small", 4, 1)
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        preset_refiner("sddr-small+head_scale")
