"""How a weights entry wants its input: one value per weights spec / checkpoint (torchvision's
``Weights.transforms`` idea), so the job stages, the CLI and training validation feed a model alike.

Every model in this project takes CIE L in [0, 100] at a fixed ``input_size`` and returns ab there; the
ab is upsampled to the original resolution and joined with the original L. What differs between weights
is the size they were trained at and how the image is brought to it. The definition here is the one
the released colorization models were fed with (Zhang et al.'s ``util.py``: resize the RGB image, then
convert to Lab): the sRGB image is resized with a Pillow filter (Pillow's filters antialias when
shrinking), then converted to L.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from colorize_core import color

_FILTERS = ("bicubic", "bilinear", "lanczos", "nearest")


@dataclass(frozen=True)
class Preprocessing:
    """``input_size`` = (H, W) the model runs at; ``resize`` = Pillow filter bringing the image there;
    ``ab_upsample`` = interpolation (as torch's) bringing the predicted ab back to full size, which
    :func:`colorize_core.render.compose` does."""

    input_size: tuple[int, int]
    resize: str = "bicubic"
    ab_upsample: str = "bilinear"

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.input_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"input_size must be (H, W) with positive sides, got {self.input_size!r}")
        object.__setattr__(self, "input_size", size)
        if self.resize not in _FILTERS:
            raise ValueError(f"resize must be one of {_FILTERS}, got {self.resize!r}")
        if self.ab_upsample not in ("bilinear", "bicubic"):
            raise ValueError(f"ab_upsample must be 'bilinear' or 'bicubic', got {self.ab_upsample!r}")

    def resize_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """RGB [H,W,3] or gray [H,W] (uint8, or uint16 kept in float precision) -> the same channels at
        ``input_size`` (uint8 stays uint8; 16-bit comes back as float in [0, 1])."""
        from PIL import Image

        h, w = self.input_size
        if not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 3)):
            raise ValueError(f"expected an RGB image [H,W,3] or gray [H,W], got shape {rgb.shape}")
        flt = getattr(Image.Resampling, self.resize.upper())
        if rgb.dtype == np.uint8:
            if rgb.shape[:2] == (h, w):
                return rgb
            return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((w, h), flt))
        f = rgb.astype(np.float32) / (65535.0 if rgb.dtype == np.uint16 else 1.0)
        if f.shape[:2] == (h, w):
            return f
        planes = [f] if f.ndim == 2 else [f[..., c] for c in range(3)]
        out = [np.asarray(Image.fromarray(np.ascontiguousarray(p), mode="F").resize((w, h), flt)) for p in planes]
        return (out[0] if f.ndim == 2 else np.stack(out, axis=-1)).clip(0.0, 1.0)

    def model_l(self, image: np.ndarray) -> np.ndarray:
        """The model's input for one image: RGB [H,W,3] or gray [H,W] (uint8 / uint16 / float in [0, 1]) ->
        float32 L in [0, 100] as [h, w] = ``input_size`` (gray: the same values as its RGB expansion's)."""
        small = self.resize_rgb(image)
        if small.ndim == 2:
            small = np.repeat(small[..., None], 3, axis=2)  # at model size: cheap
        return np.clip(color.srgb_to_l(small), 0.0, 100.0).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        unknown = set(d) - {"input_size", "resize", "ab_upsample"}
        if unknown:
            raise ValueError(f"unknown preprocessing field(s) {sorted(unknown)}")
        return cls(**{**d, "input_size": tuple(d["input_size"])})
