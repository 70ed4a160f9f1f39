"""GPU-only checks: the refiner gives the CPU's numbers on CUDA, bf16 autocast runs, and
the trainer takes bf16 steps on CUDA. Marked ``gpu``: conftest skips them, with the
reason, on machines without a CUDA device."""
from __future__ import annotations

import json

import pytest
import torch

from sddr_pipeline.models import Refiner
from sddr_pipeline.training import train
from sddr_pipeline.training.config import config_from_dict

pytestmark = pytest.mark.gpu
DEVICE = "cuda"


@pytest.fixture()
def no_tf32():
    """Full fp32 on CUDA (TF32 convolutions differ from the CPU by ~1e-3), restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    low = torch.rand(2, 1, 96, 128, generator=g)
    high = (low + 0.05 * torch.rand(2, 1, 96, 128, generator=g)).clamp(0, 1)
    return low, high


def test_refiner_on_cuda_matches_cpu(no_tf32):
    low, high = inputs()
    refiner = Refiner.from_pretrained("default")  # trained: its output departs from LOW
    on_cpu = refiner(low, high).depth
    on_gpu = refiner.to(DEVICE)(low, high).depth
    assert on_gpu.device.type == DEVICE and on_gpu.shape == on_cpu.shape == low.shape
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_forward_is_finite_and_close_to_fp32():
    low, high = inputs()
    refiner = Refiner.from_pretrained("default", device=DEVICE)
    fp32 = refiner(low, high).depth
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        bf16 = refiner(low, high).depth
    assert bf16.shape == fp32.shape and bool(torch.isfinite(bf16).all())
    assert (bf16.float() - fp32).abs().mean().item() < 2e-2  # ~2e-3 on CPU; the map departs from LOW by ~3e-2


def test_trainer_takes_bf16_steps_on_cuda(tmp_path):
    cfg = {
        "steps": 2, "preset": "sddr-small", "seed": 3, "batch_size": 2, "crop": 64, "crop_scale": [1.0, 1.0],
        "lr": 1e-3, "warmup_steps": 1, "data": [{"kind": "synthetic", "size": [64, 80]}],
        "low_res": 32, "high_res": 80, "checkpoint_every": 2, "validate_every": 0,
        "validation": {"scenes": 1, "size": [64, 80]}, "output": str(tmp_path / "run"), "device": DEVICE, "bf16": True,
    }
    final = train(config_from_dict(cfg), progress=None)
    assert (final / "model.safetensors").is_file()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"]["total"] for r in records if "loss" in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
