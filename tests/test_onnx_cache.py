"""The ONNX export cache: a folder of this user only, and exports checked against their sha256
sidecar before ONNX Runtime loads them. A tiny module keeps these tests fast; the real model's
export is covered in tests/test_engine.py."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")

from catalogfs.udfs.onnx_runtime import cache_dir, load_onnx_module  # noqa: E402

INPUT_SHAPE = (1, 3, 8, 8)


class Tiny(torch.nn.Module):
    """forward(x) → (pooled, logits), like the models the engine exports."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.conv(x).relu().mean(dim=(2, 3))
        return pooled, self.fc(pooled)


@pytest.fixture
def weights(tmp_path: Path) -> list[Path]:
    """A file standing for the bundle: the export key hashes its content."""
    path = tmp_path / "weights.bin"
    path.write_bytes(b"tiny model v1")
    return [path]


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    """A home folder of the test, with neither cache variable set."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("CATALOGFS_ONNX_CACHE", raising=False)
    return home


def outputs(onnx_module) -> torch.Tensor:
    x = torch.linspace(-1, 1, 3 * 8 * 8).reshape(INPUT_SHAPE)
    return onnx_module(x)[1]


def test_the_default_cache_is_a_private_folder_under_the_home_cache(home, weights, monkeypatch):
    folder = cache_dir()
    assert folder == home / ".cache" / "catalogfs" / "onnx"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    load_onnx_module(Tiny(), weights, INPUT_SHAPE)
    (export,) = folder.glob("*.onnx")
    digest = (folder / f"{export.name}.sha256").read_text().split()[0]
    assert digest == hashlib.sha256(export.read_bytes()).hexdigest()

    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "xdg"))
    assert cache_dir() == home / "xdg" / "catalogfs" / "onnx"
    assert stat.S_IMODE((home / "xdg" / "catalogfs" / "onnx").stat().st_mode) == 0o700


def test_a_cache_folder_others_can_write_is_not_used(tmp_path, weights, monkeypatch, caplog):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # as another user could have made it, in the shared temp folder
    monkeypatch.setenv("CATALOGFS_ONNX_CACHE", str(shared))
    with caplog.at_level(logging.WARNING):
        onnx_module = load_onnx_module(Tiny(), weights, INPUT_SHAPE)
    assert list(shared.iterdir()) == []
    assert "writable by others" in caplog.text
    used = onnx_module.path.parent
    assert used != shared and stat.S_IMODE(used.stat().st_mode) == 0o700 and used.stat().st_uid == os.getuid()
    torch.testing.assert_close(outputs(onnx_module), Tiny()(torch.linspace(-1, 1, 192).reshape(INPUT_SHAPE))[1])


def test_a_changed_cached_export_is_replaced_by_a_fresh_one(home, weights, caplog):
    first = load_onnx_module(Tiny(), weights, INPUT_SHAPE)
    path = first.path
    genuine = path.read_bytes()
    planted = Tiny()
    with torch.no_grad():
        planted.fc.bias.add_(1e-6)  # computes (almost) the same: the output check alone would pass it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation note
        torch.onnx.export(planted, (torch.zeros(INPUT_SHAPE),), str(path), input_names=["x"],
                          output_names=["pooled", "logits"], opset_version=17, dynamo=False,
                          dynamic_axes={name: {0: "n"} for name in ("x", "pooled", "logits")})
    assert path.read_bytes() != genuine
    with caplog.at_level(logging.WARNING):
        second = load_onnx_module(Tiny(), weights, INPUT_SHAPE)
    assert "does not match its sha256" in caplog.text
    assert path.read_bytes() == genuine  # exported again (the export is deterministic)
    torch.testing.assert_close(outputs(second), outputs(first), rtol=0, atol=0)

    path.write_bytes(genuine[:1000])  # cut short, as a full disk would leave it
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        third = load_onnx_module(Tiny(), weights, INPUT_SHAPE)
    assert "does not match its sha256" in caplog.text and path.read_bytes() == genuine
    torch.testing.assert_close(outputs(third), outputs(first), rtol=0, atol=0)
