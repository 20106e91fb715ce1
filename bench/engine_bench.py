"""Benchmark of the inference engine alone (no Spark, no Java): frames/s from JPEG bytes through
``udfs.engine`` against the model-only forward on pre-made tensors, per model and batch size.

    python bench/engine_bench.py --device cpu --quick        # under a minute on 2 cores
    python bench/engine_bench.py --device cuda               # on a GPU machine (bf16 autocast)

Models: EfficientNet-Lite0 with its real ImageNet weights, and a ViT-B/32-sized vision tower
(random weights: speed only) wrapped in the same engine interface. Frames are real photos from
scikit-image, JPEG-encoded at 640x360 like extracted frames. Prints a table; ``--json`` writes the
raw figures. Only needs torch, pillow, numpy (+ scikit-image for the photos).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from catalogfs.udfs.engine import EmbeddingEngine, EngineOptions, tune_malloc  # noqa: E402
from catalogfs.udfs.model_bundle import BundleSpec, LoadedModel  # noqa: E402
from catalogfs.udfs.preprocess import PreprocessSpec  # noqa: E402

PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "motorcycle_left.png", "camera.png")


def sample_jpegs(n: int, *, size: tuple[int, int] = (640, 360), quality: int = 90) -> list[bytes]:
    """``n`` JPEGs of ``size`` cut from real photos (different crops, so no two are identical): each
    photo is scaled to 1.5x ``size`` and cropped at a moving offset."""
    import skimage
    from PIL import Image

    base = Path(skimage.__file__).parent / "data"
    w, h = size
    photos = [Image.open(base / name).convert("RGB").resize((w * 3 // 2, h * 3 // 2)) for name in PHOTOS]
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        dx, dy = (i * 37) % (w // 2), (i * 23) % (h // 2)
        buf = io.BytesIO()
        img.crop((dx, dy, dx + w, dy + h)).save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


class _VitTower(torch.nn.Module):
    """A ViT-B/32-sized encoder (12 layers, width 768, patch 32, 224 px) with a 512-d projection and
    a 1000-way head; random weights. Returns (pooled, logits) like the engine expects."""

    def __init__(self) -> None:
        super().__init__()
        width, layers, heads, patch = 768, 12, 12, 32
        self.patch = torch.nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.cls = torch.nn.Parameter(torch.zeros(1, 1, width))
        self.pos = torch.nn.Parameter(torch.zeros(1, (224 // patch) ** 2 + 1, width))
        layer = torch.nn.TransformerEncoderLayer(width, heads, 4 * width, activation="gelu",
                                                 batch_first=True, norm_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(width)
        self.proj = torch.nn.Linear(width, 512, bias=False)
        self.head = torch.nn.Linear(512, 1000)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1) + self.pos
        pooled = self.proj(self.norm(self.encoder(tokens)[:, 0]))
        return pooled, self.head(pooled)


def build_models(names: list[str]) -> dict[str, LoadedModel]:
    models = {}
    if "efficientnet_lite0" in names:
        from catalogfs.udfs.model_registry import write_default_bundle
        from catalogfs.udfs.model_bundle import load_bundle

        with tempfile.TemporaryDirectory() as tmp:
            models["efficientnet_lite0"] = load_bundle(write_default_bundle(Path(tmp) / "m"))
    if "vit_b32" in names:
        spec = BundleSpec("vit_b32_random", 512, PreprocessSpec(224, 224, (0.481, 0.458, 0.408),
                                                                (0.269, 0.261, 0.276), "bicubic"), "none")
        torch.manual_seed(0)
        models["vit_b32"] = LoadedModel(spec=spec, module=_VitTower().eval(), labels=[])
    return models


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench(model: LoadedModel, frames: list[bytes], batch: int, device: str, repeats: int) -> dict:
    engine = EmbeddingEngine(model, EngineOptions(batch_size=batch, device=device, num_threads=torch.get_num_threads()))
    engine.embed(frames[:batch])  # warm-up at the production batch size
    pipeline_s = _time(lambda: engine.embed(frames), repeats)
    crop = model.spec.preprocess.crop
    tensors = [torch.randn(min(batch, len(frames) - i), 3, crop, crop) for i in range(0, len(frames), batch)]

    def model_only() -> None:
        for t in tensors:
            engine._forward(t.numpy())
        if engine.device.type == "cuda":
            torch.cuda.synchronize()

    model_only()
    model_s = _time(model_only, repeats)
    n = len(frames)
    return {"batch": batch, "frames": n, "runtime": engine.runtime,
            "pipeline_fps": n / pipeline_s, "model_only_fps": n / model_s,
            "pipeline_share_of_model_only": (n / pipeline_s) / (n / model_s)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="few frames, one batch size, one repeat")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--batch-sizes", default=None, help="comma list (default 8,32 quick: 16)")
    parser.add_argument("--models", default="efficientnet_lite0,vit_b32")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    tune_malloc()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    n = args.frames or (48 if args.quick else (2048 if device == "cuda" else 256))
    sizes = [int(b) for b in (args.batch_sizes or ("16" if args.quick else
                                                   ("64,256" if device == "cuda" else "8,32"))).split(",")]
    repeats = 1 if args.quick else 3
    frames = sample_jpegs(n)
    models = build_models(args.models.split(","))
    rows = []
    for name, model in models.items():
        for batch in sizes:
            row = {"model": name, **bench(model, frames, batch, device, repeats)}
            rows.append(row)
            print(f"{name:<20} {row['runtime']:<11} batch {batch:>4}: from JPEG {row['pipeline_fps']:8.1f} frames/s | "
                  f"model only {row['model_only_fps']:8.1f} frames/s | "
                  f"{100 * row['pipeline_share_of_model_only']:5.1f}% of model-only", flush=True)
    meta = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None, "frames": n}
    print("\n| model | runtime | batch | from JPEG (frames/s) | model only (frames/s) | share |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['runtime']} | {r['batch']} | {r['pipeline_fps']:.1f} | {r['model_only_fps']:.1f} | "
              f"{100 * r['pipeline_share_of_model_only']:.0f}% |")
    print(f"\n{json.dumps(meta)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
