"""One image file -> 8-bit pixels, the same way for every reader: training folders and CelebA
(ganrun/data/images.py), super-resolution pairs and `ganrun sample input_dir=` inputs
(ganrun/data/paired_sr.py), FID reference images (ganrun/metrics/fidelity.py). A file is one
picture whether it is trained on, measured against or super-resolved.

| the file has | what its pixels become |
|---|---|
| an EXIF Orientation tag (phone photos) | rotated / flipped upright, as a photo viewer shows it |
| 16-bit gray (`I;16*`) | value / 257, rounded |
| 32-bit integers (`I`) | value * 255 / max, rounded, max = 2**bits - 1 (2**(bits-1) - 1 signed) from the TIFF BitsPerSample / SampleFormat tags, else 65535 (PIL opens 16-bit PGM as `I`); negatives 0 |
| floats (`F`) | [0, 1] scaled to 255 when every value is <= 1, else values clipped to [0, 255] |
| 16-bit RGB(A) PNG | PIL's 8 bits: the high byte, within 1 level of value / 257 |
| alpha, a transparent palette index or colour key | composited onto `alpha_background` (white, black or a gray level); an alpha that is the same at every pixel is not a mask and is ignored |
| a truncated or corrupt file | an exception from `UNREADABLE`: every reader skips such files and counts them in one warning |

PIL's `ImageFile.LOAD_TRUNCATED_IMAGES` stays False: a JPEG cut in half must not be trained as
if it were whole (PIL would fill the missing half with gray).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps

from ganrun.errors import GanrunError

# What PIL raises for files that are not images, are cut off or corrupt (UnidentifiedImageError
# is an OSError). Readers catch exactly these: anything else is a bug of ours and should surface.
UNREADABLE: tuple[type[BaseException], ...] = (
    OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError,
)
BACKGROUNDS = {"white": 255, "black": 0}
_ALPHA_MODES = {"RGBA": "RGBA", "RGBa": "RGBA", "PA": "RGBA", "LA": "LA", "La": "LA"}
_TIFF_BITS_PER_SAMPLE, _TIFF_SAMPLE_FORMAT = 258, 339

AlphaBackground = Union[str, int, None]


@dataclass(frozen=True)
class Decoded:
    """A decoded file: `image` is 8-bit "RGB" or "L" (channels 3 or 1), or "RGBA" / "LA" when the
    caller asked for alpha untouched (alpha_background=None) and the file has alpha."""

    image: Image.Image
    transparent: bool  # the file had pixels of differing opacity (composited unless alpha_background=None)


# helpers


def background_level(value: AlphaBackground, key: str = "dataset.alpha_background") -> Optional[int]:
    """'white' -> 255, 'black' -> 0, a gray level 0..255 -> itself, None -> None (keep alpha).
    Raises GanrunError naming `key` for anything else."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in BACKGROUNDS:
        return BACKGROUNDS[value.strip().lower()]
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return value
    raise GanrunError(f"{key} must be white, black or a gray level 0-255, got {value!r}")


def background_name(value: AlphaBackground) -> str:
    """How a warning names the background: 'white', 'black' or 'gray 128'."""
    level = background_level(value)
    return {255: "white", 0: "black"}.get(level, f"gray {level}")


def _high_depth(mode: str) -> bool:
    """16/32-bit integer or float gray: PIL's `convert` clips these to 8 bits instead of scaling."""
    return mode in ("I", "F") or mode.startswith("I;16")


def _high_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """(H, W) uint8 from a 16/32-bit integer or float gray image (the policy table above)."""
    values = np.asarray(image)
    if image.mode == "F":
        values = values.astype(np.float64)
        finite = values[np.isfinite(values)]
        if finite.size and finite.max() <= 1.0:  # the usual float convention: [0, 1]
            values = values * 255.0
        return np.clip(np.nan_to_num(values, nan=0.0), 0, 255).round().astype(np.uint8)
    bits, signed = _integer_depth(image)
    top = 2 ** (bits - signed) - 1
    values = np.clip(values.astype(np.int64), 0, top)  # negatives (signed TIFFs) are black
    # round(value * 255 / top) in integers: (2 v 255 + top) // (2 top); exact, no float error
    return ((2 * values * 255 + top) // (2 * top)).astype(np.uint8)


def _integer_depth(image: Image.Image) -> tuple[int, bool]:
    """(bits per sample, signed) of a 16/32-bit integer image: from the TIFF tags when the file is
    a TIFF (12-bit camera data is stored in 16-bit samples), else 16 unsigned: PIL opens 16-bit
    PNG as I;16 and 16-bit PGM as I, already scaled to 0..65535."""
    tags = getattr(image, "tag_v2", None) or {}
    bits, sample_format = tags.get(_TIFF_BITS_PER_SAMPLE), tags.get(_TIFF_SAMPLE_FORMAT)
    bits = bits[0] if isinstance(bits, tuple) else bits
    sample_format = sample_format[0] if isinstance(sample_format, tuple) else sample_format
    if not isinstance(bits, int) or not 8 < bits <= 32:
        return 16, False
    return bits, sample_format == 2  # TIFF SampleFormat 2: two's complement


def _colour_and_alpha(image: Image.Image) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(H, W, 1 or 3) uint8 colour and (H, W) uint8 alpha or None, for the files whose pixels need
    more than `convert`: high bit depths and transparency."""
    if _high_depth(image.mode):
        gray = _high_depth_to_uint8(image)
        alpha = None
        if "transparency" in image.info:  # a 16-bit colour key (PNG tRNS): that exact value is transparent
            alpha = np.where(np.asarray(image) == image.info["transparency"], 0, 255).astype(np.uint8)
        return gray[..., None], alpha
    with_alpha = _ALPHA_MODES.get(image.mode)
    if with_alpha is None:  # palette / L / RGB / 1 with a transparent index or colour key
        with_alpha = "LA" if image.mode in ("L", "1") else "RGBA"
    pixels = np.asarray(image.convert(with_alpha))
    return pixels[..., :-1], pixels[..., -1]


def has_transparency(image: Image.Image) -> bool:
    """Whether an opened image declares transparency (an alpha channel, a transparent palette
    index or colour key): read from the header, the pixels need not be decoded."""
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def open_rgb_or_gray(path: Path, *, channels: int, alpha_background: AlphaBackground) -> Decoded:
    """Decode `path` upright and 8-bit as "RGB" (channels=3) or "L" (channels=1; ITU-R 601 luma
    from colour files), at the file's own size, transparency composited onto `alpha_background`
    ('white', 'black', 0..255; None returns "RGBA" / "LA" with the alpha untouched).

    Raises one of `UNREADABLE` for files PIL cannot decode completely (not an image, truncated,
    corrupt), GanrunError for a bad `alpha_background`.
    """
    level = background_level(alpha_background)
    target = "RGB" if channels == 3 else "L"
    with Image.open(path) as image:
        ImageOps.exif_transpose(image, in_place=True)  # loads the pixels: a truncated file raises here
        if not has_transparency(image) and not _high_depth(image.mode):
            return Decoded(image.convert(target), transparent=False)  # the common case, PIL alone
        colour, alpha = _colour_and_alpha(image)
    # A constant alpha (all 255, or the all-0 / all-128 some exporters write) carries no shape:
    # compositing it would only fade the whole picture toward the background, so it is dropped.
    transparent = alpha is not None and int(alpha.min()) != int(alpha.max())
    if alpha is not None and level is None:  # for callers that use the alpha as a mask
        decoded = Image.fromarray(np.concatenate([colour, alpha[..., None]], axis=-1))  # LA or RGBA
        return Decoded(decoded.convert("RGBA" if channels == 3 else "LA"), transparent=transparent)
    if transparent:
        # "over" onto the background, rounded: round((c a + b (255 - a)) / 255)
        weight = alpha[..., None].astype(np.int32)
        colour = ((colour.astype(np.int32) * weight + level * (255 - weight) + 127) // 255).astype(np.uint8)
    decoded = Image.fromarray(colour[..., 0] if colour.shape[-1] == 1 else colour)  # L or RGB
    return Decoded(decoded.convert(target), transparent=transparent)


def _jpeg_scan_start(data: bytes) -> Optional[int]:
    """Offset just past the first start-of-scan (SOS) header of a JPEG, walking the marker
    segments by their lengths (so the SOS of an EXIF thumbnail inside APP1 is skipped); None
    when the header is malformed."""
    position = 2  # after SOI (FF D8)
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # stand-alone markers carry no length
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:
            return position + 2 + length
        position += 2 + length
    return None


def file_is_complete(path: Path) -> bool:
    """A cheap check that a file will decode, without decoding it: PIL parses the header and,
    for PNG, checks every chunk's CRC (`verify`). PIL's verify checks nothing of a JPEG's data,
    so a JPEG must also have its end-of-image marker (FF D9) after the first scan; entropy-coded
    data never holds FF D9, so a JPEG cut short lacks it (data appended after it, as in phone
    "motion photos", is fine). Other formats are checked when decoded."""
    try:
        with Image.open(path) as image:
            is_jpeg = image.format == "JPEG"
            image.verify()
    except Exception:  # PIL raises many types for broken headers; all mean "not usable"
        return False
    if not is_jpeg:
        return True
    data = Path(path).read_bytes()  # the whole file, as PNG's CRC check reads it
    start = _jpeg_scan_start(data)
    return start is not None and data.find(b"\xff\xd9", start) != -1
