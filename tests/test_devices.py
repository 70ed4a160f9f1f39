"""Device choice (sddr_pipeline.devices): one function for the CLI, the trainer and the Ray stage."""
from __future__ import annotations

import logging

import pytest
import torch

from sddr_pipeline.cli.main import main
from sddr_pipeline.devices import DeviceError, resolve_device


def test_cpu_and_auto():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("cpu:0") == "cpu:0"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "cpu:", "", "AUTO"])
def test_unknown_names_are_refused(name):
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device(name)


def test_cuda_without_cuda_is_an_error_not_a_fallback(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(DeviceError, match="no CUDA device.*CUDA_VISIBLE_DEVICES='0'"):
        resolve_device("cuda:0")
    with caplog.at_level(logging.WARNING, logger="sddr_pipeline.devices"):
        assert resolve_device("auto") == "cpu"
    assert "a GPU was assigned" in caplog.text


def test_the_cli_reports_an_unusable_device(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="^sddr: device 'cuda' was requested"):
        main(["refine", str(tmp_path), str(tmp_path / "out"), "--predictor", "simulated", "--device", "cuda"])
