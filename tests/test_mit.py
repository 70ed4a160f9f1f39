"""The own MiT encoder (:mod:`sddr_pipeline.models.mit`) against transformers' SegformerModel,
which SDDRNet used before: same parameter names and order, same seeded initialisation,
bit-identical outputs and gradients (eval and train mode, drop path, half precision), the
existing weight files loading strictly with unchanged results; and the import isolation
this buys (no transformers outside the ``hf`` predictor)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sddr_pipeline.models import PRESETS, Refiner, RefinerConfig, SDDRNet
from sddr_pipeline.models.config import MIT_PATCH_SIZES, MIT_STRIDES
from sddr_pipeline.models.mit import MiT
from sddr_pipeline.models.network import mit_config

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
PRESET_NAMES = ("sddr-small", "sddr-paper")
#: SDDRNet feeds the MiT its 1/4-scale stem feature, stem_channels[1] wide.
CHANNELS = 16


def segformer(config: RefinerConfig, channels: int = CHANNELS) -> nn.Module:
    """The encoder exactly as SDDRNet built it before (transformers' default attention)."""
    return transformers.SegformerModel(transformers.SegformerConfig(
        num_channels=channels,
        num_encoder_blocks=4,
        depths=list(config.mit_depths),
        sr_ratios=list(config.mit_sr_ratios),
        hidden_sizes=list(config.mit_hidden_sizes),
        patch_sizes=list(MIT_PATCH_SIZES),
        strides=list(MIT_STRIDES),
        num_attention_heads=list(config.mit_num_heads),
        mlp_ratios=list(config.mit_mlp_ratios),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
        drop_path_rate=config.drop_path_rate,
        reshape_last_stage=True,
    ))


class SegformerEncoder(nn.Module):
    """transformers' encoder behind the MiT interface and parameter names, to swap into an
    SDDRNet in place of :class:`MiT` (the reference for whole-network comparisons)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.stages = model.stages
        object.__setattr__(self, "model", model)  # not a submodule: the names stay "stages.*"

    def train(self, mode: bool = True) -> "SegformerEncoder":
        self.model.train(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(pixel_values=x, output_hidden_states=True).hidden_states)


def pair(name: str, drop_path_rate: float = 0.0) -> tuple[nn.Module, MiT]:
    """transformers' encoder with random weights (biases and norms too) and ours loaded from it."""
    config = PRESETS[name].replace(drop_path_rate=drop_path_rate)
    torch.manual_seed(0)
    ref = segformer(config)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = MiT(mit_config(config, CHANNELS))
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def run(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    if isinstance(model, MiT):
        return model(x)
    return list(model(pixel_values=x, output_hidden_states=True).hidden_states)


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b) == 4
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.dtype == v.dtype and u.shape == v.shape and u.stride() == v.stride(), i
        assert torch.equal(u, v), f"stage {i}: max |diff| {(u.float() - v.float()).abs().max().item()}"


def forward_backward(model: nn.Module, x: torch.Tensor, seed: int = 1) -> tuple[list[torch.Tensor], torch.Tensor,
                                                                              dict[str, torch.Tensor]]:
    """Stage outputs, input gradient and parameter gradients of a fixed random loss
    (the global RNG seeded first, so drop path draws the same masks)."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    outs = run(model, x)
    g = torch.Generator().manual_seed(2)
    loss = sum((o.float() * torch.randn(o.shape, generator=g)).sum() for o in outs)
    loss.backward()
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    return outs, x.grad, grads


# --- structure and initialisation -------------------------------------------------------

@pytest.mark.parametrize("name", PRESET_NAMES)
def test_parameter_names_order_and_seeded_init_match(name: str) -> None:
    """Same keys in the same order (the optimizer state of a checkpoint is indexed by
    parameter order), same initial values from the same seed, same RNG use afterwards."""
    config = PRESETS[name]
    torch.manual_seed(123)
    ref = segformer(config)
    ref_next = torch.rand(8)
    torch.manual_seed(123)
    ours = MiT(mit_config(config, CHANNELS))
    ours_next = torch.rand(8)
    a, b = ref.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    assert [k for k, _ in ref.named_parameters()] == [k for k, _ in ours.named_parameters()]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(ref_next, ours_next)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_seeded_network_init_unchanged(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh seeded SDDRNet (a new training run) gets the same weights as when its
    encoder was transformers' model, every module after the encoder included."""
    import sddr_pipeline.models.network as network

    ours = Refiner.from_config(name, seed=7).net.state_dict()
    monkeypatch.setattr(network, "MiT", lambda cfg: SegformerEncoder(segformer(PRESETS[name], cfg.num_channels)))
    ref_net = Refiner.from_config(name, seed=7).net
    assert isinstance(ref_net.mit, SegformerEncoder)
    ref = ref_net.state_dict()
    assert list(ref) == list(ours)
    for k in ref:
        assert torch.equal(ref[k], ours[k]), k


# --- numerics ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", PRESET_NAMES)
def test_eval_forward_bit_identical(name: str) -> None:
    ref, ours = pair(name)
    ref.eval()
    ours.eval()
    x = torch.randn(2, CHANNELS, 64, 96)
    with torch.no_grad():
        assert_same(run(ref, x), run(ours, x))
    # channels_last input, as the Refiner runs it
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert_same(run(ref, x), run(ours, x))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_train_forward_backward_bit_identical(name: str) -> None:
    ref, ours = pair(name)
    ref.train()
    ours.train()
    x = torch.randn(2, CHANNELS, 64, 64)
    out_r, gx_r, g_r = forward_backward(ref, x)
    out_o, gx_o, g_o = forward_backward(ours, x)
    assert_same(out_r, out_o)
    assert torch.equal(gx_r, gx_o)
    assert list(g_r) == list(g_o) and len(g_r) == len(list(ours.parameters()))
    for k in g_r:
        assert torch.equal(g_r[k], g_o[k]), k


def test_drop_path_same_masks_and_gradients() -> None:
    ref, ours = pair("sddr-paper", drop_path_rate=0.3)
    rates = [b.drop_path.p for s in ours.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3) and rates == sorted(rates)
    ref.train()
    ours.train()
    x = torch.randn(4, CHANNELS, 64, 64)
    out_r, gx_r, g_r = forward_backward(ref, x, seed=5)
    after_r = torch.rand(4)
    out_o, gx_o, g_o = forward_backward(ours, x, seed=5)
    after_o = torch.rand(4)
    assert_same(out_r, out_o)
    assert torch.equal(gx_r, gx_o)
    assert all(torch.equal(g_r[k], g_o[k]) for k in g_r) and list(g_r) == list(g_o)
    assert torch.equal(after_r, after_o)  # the same number of draws
    # drop path is the identity in eval mode
    ref.eval()
    ours.eval()
    with torch.no_grad():
        assert_same(run(ref, x), run(ours, x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_bit_identical(dtype: torch.dtype) -> None:
    ref, ours = pair("sddr-small")
    ref.to(dtype).train()
    ours.to(dtype).train()
    x = torch.randn(2, CHANNELS, 64, 64).to(dtype)
    out_r, gx_r, g_r = forward_backward(ref, x)
    out_o, gx_o, g_o = forward_backward(ours, x)
    assert out_o[0].dtype == dtype
    assert_same(out_r, out_o)
    assert torch.equal(gx_r, gx_o)
    assert all(torch.equal(g_r[k], g_o[k]) for k in g_r)


def test_autocast_bit_identical() -> None:
    ref, ours = pair("sddr-small")
    ref.eval()
    ours.eval()
    x = torch.randn(2, CHANNELS, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = run(ref, x), run(ours, x)
    assert a[0].dtype == torch.bfloat16
    assert_same(a, b)


# --- whole network, existing weights ----------------------------------------------------

def _with_segformer(net: SDDRNet) -> SDDRNet:
    """A copy of ``net`` (channels_last, as a :class:`Refiner` holds it) whose encoder is
    transformers' model holding the same weights."""
    twin = SDDRNet(net.config)
    twin.mit = SegformerEncoder(segformer(net.config, net.config.stem_channels[1]))
    twin.load_state_dict(net.state_dict(), strict=True)
    return twin.to(memory_format=torch.channels_last)


def _inputs(b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    low = torch.rand(b, 1, h, w, generator=g)
    high = (low + 0.1 * torch.randn(b, 1, h, w, generator=g)).clamp(0, 1)
    return low, high


def test_default_weights_load_strictly_with_unchanged_output() -> None:
    refiner = Refiner.from_pretrained("default")
    twin = _with_segformer(refiner.net).eval()
    low, high = _inputs(1, 96, 160)
    with torch.inference_mode():
        ours, ref = refiner.net(low, high), twin(low, high)
    for field, a, b in zip(ours._fields, ours, ref):
        if a is not None:
            assert torch.equal(a, b), field


def test_training_checkpoint_resumes_bit_identically() -> None:
    """The long run's checkpoint loads strictly; a training step's loss and every gradient
    are bit-identical to those of the transformers encoder."""
    from safetensors.torch import load_file

    checkpoints = sorted((REPO / "checkpoints" / "long").glob("step-*[0-9].safetensors"))
    if not checkpoints:
        pytest.skip("no checkpoints/long/step-*.safetensors")
    state = load_file(str(checkpoints[-1]))
    net = Refiner.from_config("sddr-small").net  # channels_last, as the trainer runs it
    net.load_state_dict(state, strict=True)
    twin = _with_segformer(net)
    low, high = _inputs(2, 256, 256)
    results = []
    for model in (net, twin):
        model.train()
        model.zero_grad(set_to_none=True)
        out = model.forward_network(low, high)
        loss = (out.depth - low).abs().mean() + out.side2.square().mean() + out.side4.abs().mean()
        loss.backward()
        results.append((loss.detach(), {k: p.grad for k, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert list(grads_a) == list(grads_b)
    for k in grads_a:
        assert (grads_a[k] is None) == (grads_b[k] is None), k
        if grads_a[k] is not None:
            assert torch.equal(grads_a[k], grads_b[k]), k


# --- import isolation -------------------------------------------------------------------

def _fresh_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=REPO)


#: Modules a refiner actor with a non-hf predictor must not import: the hf predictor's
#: stack and the optional extras (ONNX, geometry, dataframes) nothing there uses.
NOT_IN_ACTOR = ("transformers", "huggingface_hub", "tokenizers", "onnxruntime", "onnx", "open3d", "pycolmap",
                "skimage", "pandas")


def test_refiner_does_not_import_transformers() -> None:
    proc = _fresh_python(
        "import sys\n"
        "import sddr_pipeline.models\n"
        "from sddr_pipeline.models import Refiner\n"
        "Refiner.from_pretrained('default')\n"
        "print(sorted(m for m in ('transformers', 'huggingface_hub') if m in sys.modules))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


def test_simulated_refine_actor_imports_stay_minimal() -> None:
    """A ``RefineStage`` actor with the simulated predictor, through its first result."""
    proc = _fresh_python(
        "import io, sys\n"
        "import numpy as np\n"
        "from PIL import Image\n"
        "from sddr_pipeline.pipelines.stage import RefineStage\n"
        "from sddr_pipeline.shards.schema import encode_array\n"
        "stage = RefineStage('simulated', 'default', device='cpu', torch_threads=1)\n"
        "rng = np.random.default_rng(0)\n"
        "buf = io.BytesIO()\n"
        "Image.fromarray((rng.random((64, 96, 3)) * 255).astype(np.uint8)).save(buf, format='PNG')\n"
        "gt = encode_array((1 + rng.random((64, 96))).astype(np.float32))\n"
        "row = stage.process({'id': 'a', 'source': 'a.png', 'image': buf.getvalue(), 'gt': gt, 'gt_kind': 'depth',"
        " 'read_error': None})\n"
        "assert row.get('error_reason') is None, row.get('error_reason')\n"
        f"print(sorted(m for m in {NOT_IN_ACTOR!r} if m in sys.modules))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


def test_hf_predictor_module_imports_transformers_lazily() -> None:
    proc = _fresh_python(
        "import sys\n"
        "import sddr_pipeline.predictors.hf\n"
        "from sddr_pipeline.registry import PREDICTORS\n"
        "PREDICTORS.get('hf')\n"
        "print('transformers' in sys.modules)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False", proc.stdout
