"""Input makers for `dataset.make_a`: the network's input A made on the fly from a target image B
(edges -> photo, gray -> colour, degraded -> clean), so one folder of images is a paired dataset.

`make_a` names one maker or a chain applied in order, each entry a name or a mapping of the name
and its parameters (`ganrun/data/translation.py` calls `Degradation(spec, channels=...)`):

    make_a: edges
    make_a: [grayscale, {name: blur, sigma: [0.5, 2.0]}, {name: jpeg, quality: [30, 90], p: 0.5}]

| maker | what it does to uint8 (N, C, H, W) | parameters (defaults) |
|---|---|---|
| `edges` | Canny edges of the luminance, black lines on white (pix2pix's edges2shoes look) | `low` 0.2, `high` 0.4, `sigma` 1.0 |
| `grayscale` | ITU-R 601 luma, replicated to C channels (colorization) | - |
| `blur` | isotropic Gaussian blur, sigma drawn per image | `sigma` [0.5, 2.0] pixels |
| `noise` | additive Gaussian noise per pixel and channel, sigma drawn per image | `sigma` [5, 25] (8-bit levels) |
| `jpeg` | JPEG compression round trip (PIL/libjpeg), quality drawn per image | `quality` [30, 90] |
| `motion_blur` | linear motion blur (kornia), odd length and angle drawn per image | `length` [3, 9] pixels, `angle` [0, 180] degrees |
| `scratches` | thin bright or dark strokes across the image (old-print scratches) | `count` [1, 4] per image, `width` [1, 2] pixels |

Every maker also takes `p` (1.0): the probability that an image gets it. A range `[low, high]`
is drawn uniformly per image (integers for `quality`); a single number fixes the value.

Randomness: the caller hands one `numpy.random.Generator` per image, seeded by what identifies
that image's draw (translation.py: the run's seed, the image index and the epoch; held-out
images: their index alone), and every maker draws from it in chain order, a fixed number of
values per image whether or not `p` fires. An image's input therefore depends on its own
generator only, never on the rest of its batch, and a resumed run makes the same inputs.
Results are uint8 after every step, as if each degradation were saved to a file.

Adding a maker: a `Maker` subclass with its `name`, its parameters as fields and `make`, plus an
entry in `MAKERS`; the call sites do not change.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Optional, Union

import kornia.filters
import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ganrun.errors import GanrunError

Spec = Union[None, str, dict, Sequence[Union[str, dict]]]
Range = tuple[float, float]

# ITU-R BT.601 luma, the weights PIL's convert("L") and kornia's rgb_to_grayscale use.
LUMA = (0.299, 0.587, 0.114)

# helpers


def _range(value: Any, *, key: str, low: float, high: float, integer: bool = False) -> Range:
    """A number or [low, high] within [low, high] bounds -> (low, high). Raises GanrunError naming `key`."""
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if len(values) == 1:
        values = values * 2
    kind = "an integer" if integer else "a number"
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise GanrunError(f"{key} must be {kind} or a range [low, high], got {value!r}")
    if integer and not all(float(v).is_integer() for v in values):
        raise GanrunError(f"{key} must be whole numbers, got {value!r}")
    first, last = float(values[0]), float(values[1])
    if not low <= first <= last <= high:
        raise GanrunError(f"{key}={value!r} must lie within [{low:g}, {high:g}] with low <= high")
    return first, last


def _draw(generator: np.random.Generator, bounds: Range) -> float:
    """One value uniformly in [low, high]; always one draw, so the generator's sequence does not
    depend on whether the range is a single value."""
    return bounds[0] + (bounds[1] - bounds[0]) * generator.random()


def luminance(images: torch.Tensor) -> torch.Tensor:
    """uint8 or float (N, 3, H, W) -> float (N, 1, H, W) on the same scale: ITU-R 601 luma."""
    weights = torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True)


def _hysteresis(marked: np.ndarray) -> np.ndarray:
    """Canny's hysteresis on (N, H, W) maps of 0 / 0.5 (weak) / 1 (strong): float 0/1 maps keeping
    the strong pixels and every weak one 8-connected to a strong one through weak pixels."""
    within_image = np.zeros((3, 3, 3), dtype=bool)
    within_image[1] = True  # 8-connectivity inside each image, none across the batch
    labels, count = scipy.ndimage.label(marked > 0, structure=within_image)
    keep = np.zeros(count + 1, dtype=bool)
    keep[labels[marked == 1]] = True
    keep[0] = False  # the background
    return keep[labels].astype(np.float32)


def _jpeg_round_trip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """uint8 (C, H, W) -> the same after saving as JPEG at `quality` and decoding."""
    pixels = image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        array = np.asarray(decoded.convert("L" if pixels.shape[-1] == 1 else "RGB"))
    return torch.from_numpy(array.copy()).reshape(image.shape[1], image.shape[2], -1).permute(2, 0, 1)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float on the 0..255 scale -> uint8, rounded as a saved file is."""
    return images.round().clamp_(0, 255).to(torch.uint8)


# classes


@dataclass(frozen=True, kw_only=True)
class Maker:
    """One step of `dataset.make_a`. Subclasses set `name`, declare their parameters as fields
    (checked in `__post_init__`) and implement `make`."""

    name: ClassVar[str] = ""
    p: float = 1.0  # probability that an image gets this step
    channels: int = field(default=3, repr=False)  # the dataset's, filled in by Degradation
    key: str = field(default="dataset.make_a", repr=False)  # how errors name this entry

    def __post_init__(self) -> None:
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0 <= self.p <= 1:
            raise GanrunError(f"{self.key}.p must be a probability in [0, 1], got {self.p!r}")

    def __call__(self, images: torch.Tensor, generators: Sequence[np.random.Generator]) -> torch.Tensor:
        """uint8 (N, C, H, W) -> uint8 (N, C, H, W), image i drawing from generators[i] only."""
        applied = [generator.random() < self.p for generator in generators]  # one draw each, always
        made = self.make(images, generators)
        if all(applied):
            return made
        keep = torch.tensor(applied).view(-1, 1, 1, 1)
        return torch.where(keep, made, images)

    def make(self, images: torch.Tensor, generators: Sequence[np.random.Generator]) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        """'blur(sigma 0.5-2)': the name and the settings that differ from the defaults."""
        parts = []
        for item in fields(self):
            if item.name in ("channels", "key"):
                continue
            value = getattr(self, item.name)
            if value != item.default:
                shown = f"{value[0]:g}-{value[1]:g}" if isinstance(value, tuple) and value[0] != value[1] else (
                    f"{value[0]:g}" if isinstance(value, tuple) else f"{value:g}")
                parts.append(f"{item.name} {shown}")
        return self.name + (f"({', '.join(parts)})" if parts else "")


@dataclass(frozen=True, kw_only=True)
class Edges(Maker):
    """Canny edges (kornia.filters.canny, Canny 1986) of the luminance in [0, 1], drawn as black
    1-pixel lines on white, replicated to C channels: the look of pix2pix's edges2shoes /
    edges2handbags inputs (Isola et al. 2017, there from HED edges; Canny is the kept-library
    stand-in). `low` / `high` are the hysteresis thresholds on kornia's unnormalised Sobel
    magnitude, on which a unit step reaches about 2.6 after the blur: the defaults keep a face's
    outline, eyes, nose and mouth at 64 px and drop skin texture. `sigma`: the Gaussian blur
    before the gradient. No randomness."""

    name: ClassVar[str] = "edges"
    low: float = 0.2
    high: float = 0.4
    sigma: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("low", "high", "sigma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise GanrunError(f"{self.key}.{name} must be a number > 0, got {value!r}")
        if self.low > self.high:
            raise GanrunError(f"{self.key}: low={self.low} must not exceed high={self.high}")

    def make(self, images: torch.Tensor, generators: Sequence[np.random.Generator]) -> torch.Tensor:
        gray = luminance(images) / 255.0 if images.shape[1] == 3 else images.float() / 255.0
        # Reflect-pad first: kornia's blur and Sobel see zeros beyond the border otherwise, and
        # every map would get a frame of edges along the image's sides.
        radius = math.ceil(3 * self.sigma)
        pad = min(radius + 2, gray.shape[-1] - 1, gray.shape[-2] - 1)
        padded = F.pad(gray, (pad, pad, pad, pad), mode="reflect")
        kernel = 2 * radius + 1
        # kornia's gradient, non-maximum suppression and thresholds (0 / 0.5 weak / 1 strong); the
        # hysteresis is done here, as connected components: kornia grows edges one pixel per
        # round over the whole batch, 25x slower on faces, with the same result (a weak pixel is
        # kept when weak pixels connect it to a strong one through any of the 8 neighbours).
        _, marked = kornia.filters.canny(padded, self.low, self.high, kernel_size=kernel, sigma=(self.sigma, self.sigma),
                                         hysteresis=False)
        edges = torch.from_numpy(_hysteresis(marked[:, 0].numpy())).unsqueeze(1)
        edges = edges[..., pad : pad + gray.shape[-2], pad : pad + gray.shape[-1]]
        return _to_uint8(255.0 * (1.0 - edges)).expand(-1, images.shape[1], -1, -1).contiguous()


@dataclass(frozen=True, kw_only=True)
class Grayscale(Maker):
    """ITU-R 601 luma replicated to the 3 channels: the input of colorization (pix2pix's
    `--model colorization` feeds L of Lab; here the model sees ordinary RGB images). Needs
    dataset.channels=3."""

    name: ClassVar[str] = "grayscale"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.channels != 3:
            raise GanrunError(f"{self.key}=grayscale needs colour targets, but dataset.channels={self.channels}; set dataset.channels=3")

    def make(self, images: torch.Tensor, generators: Sequence[np.random.Generator]) -> torch.Tensor:
        return _to_uint8(luminance(images)).expand(-1, 3, -1, -1).contiguous()


@dataclass(frozen=True, kw_only=True)
class Blur(Maker):
    """Isotropic Gaussian blur, sigma drawn uniformly per image from `sigma` (pixels), reflected
    at the borders. The kernel spans 3 sigma of the range's top, for every image alike, so an
    image's result does not depend on the others of its batch."""

    name: ClassVar[str] = "blur"
    sigma: Range = (0.5, 2.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "sigma", _range(self.sigma, key=f"{self.key}.sigma", low=0.01, high=50))

    def make(self, images: torch.Tensor, generators: Sequence[np.random.Generator]) -> torch.Tensor:
        sigmas = torch.tensor([_draw(generator, self.sigma) for generator in generators], dtype=torch.float32)
        radius = min(math.ceil(3 * self.sigma[1]), images.shape[-1] - 1, images.shape[-2] - 1)
        blurred = kornia.filters.gaussian_blur2d(images.float(), (2 * radius + 1, 2 * radius + 1),
                                                 sigmas.view(-1, 1).expand(-1, 2), border_type="reflect")
        return _to_uint8(blurred)


@dataclass(frozen=True, kw_only=True)
class Noise(Maker):
    """Additive white Gaussian noise, independent per pixel and channel, its standard deviation
    drawn uniformly per image from `sigma` in 8-bit levels (25 = the classic sigma-25 denoising
    benchmark), rounded and clipped to 0..255."""

    name: ClassVar[str] = "noise"
    sigma: Range = (5.0, 25.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "sigma", _range(self.sigma, key=f"{self.key}.sigma", low=0, high=255))

    def make(self, images: torch.Tensor, generators: Sequence[np.random.Generator]) -> torch.Tensor:
        shape = tuple(images.shape[1:])
        noise = [_draw(generator, self.sigma) * generator.standard_normal(shape, dtype=np.float32) for generator in generators]
        return _to_uint8(images.float() + torch.from_numpy(np.stack(noise)))


@dataclass(frozen=True, kw_only=True)
class Jpeg(Maker):
    """A JPEG round trip through PIL (libjpeg, 4:2:0 chroma for colour, standard tables), quality
    drawn uniformly per image from the integers of `quality` (1-100). PIL rather than
    torchvision.io.encode_jpeg: torchvision 0.29 deprecates its codecs and warns at every call."""

    name: ClassVar[str] = "jpeg"
    quality: Range = (30, 90)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "quality", _range(self.quality, key=f"{self.key}.quality", low=1, high=100, integer=True))

    def make(self, images: torch.Tensor, generators: Sequence[np.random.Generator]) -> torch.Tensor:
        low, high = int(self.quality[0]), int(self.quality[1])
        qualities = [int(generator.integers(low, high + 1)) for generator in generators]
        return torch.stack([_jpeg_round_trip(image, quality) for image, quality in zip(images, qualities)])


@dataclass(frozen=True, kw_only=True)
class MotionBlur(Maker):
    """Linear motion blur (camera shake along a straight line): kornia.filters.motion_blur, a
    line kernel of `length` pixels (odd, drawn uniformly per image from the odd integers of the
    range) at an angle drawn uniformly per image from `angle` (degrees, anti-clockwise), the
    streak symmetric about each pixel (direction 0), reflected at the borders. The linear kernel
    is the usual synthetic stand-in for shake (DeblurGAN, Kupyn et al. 2018, draws longer random
    trajectories); lengths are in pixels of the image as it is, so 3-9 is mild to strong at 64 px."""

    name: ClassVar[str] = "motion_blur"
    length: Range = (3, 9)
    angle: Range = (0.0, 180.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        length = _range(self.length, key=f"{self.key}.length", low=1, high=101, integer=True)
        if not any(int(value) % 2 for value in range(int(length[0]), int(length[1]) + 1)):
            raise GanrunError(f"{self.key}.length={self.length!r} holds no odd length; e.g. [3, 9]")
        object.__setattr__(self, "length", length)
        object.__setattr__(self, "angle", _range(self.angle, key=f"{self.key}.angle", low=-360, high=360))

    def make(self, images: torch.Tensor, generators: Sequence[np.random.Generator]) -> torch.Tensor:
        odd = [value for value in range(int(self.length[0]), int(self.length[1]) + 1) if value % 2]
        made = []
        for image, generator in zip(images, generators):
            length = odd[int(generator.integers(len(odd)))]
            angle = _draw(generator, self.angle)
            length = min(length, 2 * ((min(image.shape[-2:]) - 1) // 2) - 1)  # reflect padding needs a smaller radius
            if length < 3:  # a 1-pixel line, or an image too small for any streak
                made.append(image)
                continue
            blurred = kornia.filters.motion_blur(image.float().unsqueeze(0), length, angle, 0.0, border_type="reflect")
            made.append(_to_uint8(blurred[0]))
        return torch.stack(made)


@dataclass(frozen=True, kw_only=True)
class Scratches(Maker):
    """Synthetic scratches of old prints: `count` thin strokes per image (drawn uniformly from the
    integers of the range), each a gently bent line (3 points) of `width` pixels across 30-100 %
    of the image, bright (gray level 200-255) or dark (0-55) with probability 1/2, replacing the
    pixels it covers in every channel. Everything is drawn from the image's generator, so the
    scratches are a function of it alone. (Restoration papers synthesize such defects as random
    curves, e.g. Wan et al. 2020, "Bringing Old Photos Back to Life"; this is a simple version.)"""

    name: ClassVar[str] = "scratches"
    count: Range = (1, 4)
    width: Range = (1, 2)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "count", _range(self.count, key=f"{self.key}.count", low=0, high=100, integer=True))
        object.__setattr__(self, "width", _range(self.width, key=f"{self.key}.width", low=1, high=64, integer=True))

    def make(self, images: torch.Tensor, generators: Sequence[np.random.Generator]) -> torch.Tensor:
        height, width = images.shape[-2:]
        made = images.clone()
        for image, generator in zip(made, generators):
            canvas = Image.new("I", (width, height), 0)  # 0 = untouched, 1 + level = scratched with that level
            draw = ImageDraw.Draw(canvas)
            for _ in range(int(generator.integers(int(self.count[0]), int(self.count[1]) + 1))):
                length = generator.uniform(0.3, 1.0) * math.hypot(width, height)
                angle = generator.uniform(0, math.pi)
                cx, cy = generator.uniform(0, width), generator.uniform(0, height)
                dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
                bend = generator.normal(0, 0.05) * length  # the middle point off the straight line
                middle = (cx - math.sin(angle) * bend, cy + math.cos(angle) * bend)
                level = int(generator.integers(200, 256)) if generator.random() < 0.5 else int(generator.integers(0, 56))
                stroke = int(generator.integers(int(self.width[0]), int(self.width[1]) + 1))
                draw.line([(cx - dx, cy - dy), middle, (cx + dx, cy + dy)], fill=1 + level, width=stroke)
            marks = torch.from_numpy(np.asarray(canvas).astype(np.int16))  # PIL's 32-bit integer canvas
            scratched = marks > 0
            image[:, scratched] = (marks[scratched] - 1).to(torch.uint8)
        return made


# The names `dataset.make_a` accepts.
MAKERS: dict[str, type[Maker]] = {maker.name: maker for maker in (Edges, Grayscale, Blur, Noise, Jpeg, MotionBlur, Scratches)}


class Degradation:
    """A chain of makers built from `dataset.make_a` (a name, a {name: ..., parameter: ...}
    mapping, or a list of those), applied in order.

    Raises GanrunError naming the entry for an unknown maker or parameter and a bad value.
    """

    def __init__(self, spec: Spec, *, channels: int, key: str = "dataset.make_a"):
        entries = list(spec) if isinstance(spec, Sequence) and not isinstance(spec, str) else [spec]
        if not entries:
            raise GanrunError(f"{key} is an empty list; name a maker ({', '.join(MAKERS)}) or set it to null")
        self.makers: list[Maker] = [
            self._build(entry, channels=channels, key=f"{key}[{number}]" if len(entries) > 1 else key)
            for number, entry in enumerate(entries)
        ]

    @staticmethod
    def _build(entry: Union[str, dict], *, channels: int, key: str) -> Maker:
        if isinstance(entry, str):
            name, parameters = entry, {}
        elif isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            name, parameters = entry["name"], {str(k): v for k, v in entry.items() if k != "name"}
        else:
            raise GanrunError(f"{key} must be a maker name or {{name: ..., parameter: value}}, got {entry!r}")
        maker = MAKERS.get(name)
        if maker is None:
            raise GanrunError(f"{key}={name!r} is not a maker; choose one of {', '.join(MAKERS)}")
        allowed = [item.name for item in fields(maker) if item.name not in ("channels", "key")]
        unknown = [parameter for parameter in parameters if parameter not in allowed]
        if unknown:
            raise GanrunError(f"{key}: {name} has no parameter {unknown[0]!r}; it takes {', '.join(allowed)}")
        return maker(**parameters, channels=channels, key=key)

    def __call__(self, images: torch.Tensor, generators: Sequence[np.random.Generator]) -> torch.Tensor:
        """uint8 (N, C, H, W) -> uint8 (N, C, H, W); generators: one per image, consumed in chain order."""
        if len(generators) != len(images):
            raise ValueError(f"{len(images)} images but {len(generators)} generators")
        for maker in self.makers:
            images = maker(images, generators)
        return images

    def describe(self) -> str:
        """'edges' / 'grayscale+blur(sigma 1-3)': for the dataset's source line."""
        return "+".join(maker.describe() for maker in self.makers)


def degradation_or_none(spec: Spec, *, channels: int, key: str = "dataset.make_a") -> Optional[Degradation]:
    """`Degradation(spec)`, or None for make_a=null."""
    return None if spec is None else Degradation(spec, channels=channels, key=key)
