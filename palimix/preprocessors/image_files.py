"""Image file bytes -> an RGB uint8 array of a fixed size, for the images real data holds.

Pure Python + Pillow (no TensorFlow), so the same decoder serves the tf.data
preprocessor (`palimix.preprocessors.image`), the CLI's contact sheets and tests.

What real datasets contain and what happens to it:

| input | result |
|---|---|
| JPEG (also phone MPO), PNG, WebP, GIF, BMP, TIFF | decoded; GIF/WebP animations: first frame |
| EXIF orientation tag | applied (the picture is upright, as viewers show it) |
| CMYK (incl. Adobe-inverted), YCbCr, palette, 1-bit, grayscale | converted to RGB |
| 16-bit grayscale (PNG/TIFF) | scaled to 8 bits (65535 -> 255), not clipped to white |
| alpha (RGBA, LA, palette or RGB/L with a transparent colour) | composited on `background` |
| more than `max_pixels` pixels (decompression bombs) | refused before decoding |
| empty, truncated, non-image, unsupported format | `ImageDecodeError` with a `reason` |

Large JPEGs are decoded with libjpeg's DCT scaling (`Image.draft`) to the smallest
size that is still at least the target size: decoding a 640x480 photo for a 224 px
model reads it at 320x240, several times cheaper than a full decode plus resize.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from palimix.errors import PalimixError

# Formats Pillow may open. A closed list: Pillow's other plugins include EPS (which
# runs Ghostscript) and rarely used parsers that are not worth the attack surface.
# (Phones' multi-picture JPEGs open through the JPEG plugin, as format "MPO".)
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# Pillow's own decompression-bomb threshold (about 9459 x 9459 pixels).
DEFAULT_MAX_PIXELS = 89_478_485

# Transparent pixels become white, as browsers and document viewers show them.
DEFAULT_BACKGROUND = (255, 255, 255)

# Why an image was dropped (the keys of the drop counters).
REASONS = {
    "missing": "file not found",
    "empty": "empty file",
    "not_an_image": "not an image file",
    "unsupported_format": "image format not supported",
    "too_large": "too many pixels (decompression bomb?)",
    "truncated": "truncated image file",
    "corrupt": "corrupt image data",
}

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def member_path(container: str, member: str) -> str:
    """`image/path` of an image stored inside another file (a tar shard, a TFDS split):
    "shard-000.tar[0001.jpg]". Error messages name it; it is never opened as a file."""
    return f"{container}[{member}]"


def is_member_path(path: str) -> bool:
    return path.endswith("]") and "[" in path


class ImageDecodeError(PalimixError, ValueError):
    """An image that cannot be used; `reason` is a key of REASONS, `path` the file."""

    def __init__(self, reason: str, path: str = "", detail: str = ""):
        self.reason = reason
        self.path = path
        self.detail = detail
        where = path or "<image bytes without a file name>"
        message = f"{REASONS[reason]}: {where}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


def _target_size(image_size) -> tuple[int, int]:
    """(width, height) for PIL from an int (square) or a (height, width) pair."""
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(width), int(height)


def decode(
    data: bytes,
    image_size=224,
    *,
    path: str = "",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
) -> np.ndarray:
    """Decodes image file bytes to a uint8 RGB array of shape [height, width, 3].

    `image_size` is an int (square, as PaLI and big_vision resize: the aspect ratio is
    not kept) or (height, width). `path` only names the file in errors.
    Raises ImageDecodeError for anything that is not a usable image.
    (The tf.data preprocessor uses `decode_near_size` and resizes in TensorFlow.)
    """
    width, height = _target_size(image_size)
    image = Image.fromarray(decode_near_size(data, image_size, path=path, max_pixels=max_pixels, background=background))
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def decode_near_size(
    data: bytes,
    image_size=224,
    *,
    path: str = "",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
) -> np.ndarray:
    """Like `decode`, but leaves the final resize to the caller: the uint8 RGB array is
    upright and at least `image_size` on each side where the file is, and less than
    twice it where cheap reductions apply (JPEG DCT scaling, Pillow's box `reduce`)."""
    if not data:
        raise ImageDecodeError("empty", path)
    width, height = _target_size(image_size)
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageDecodeError("too_large", path, str(e)) from None
    except UnidentifiedImageError:
        # Pillow says the same for formats it knows but we do not allow.
        other_format = _any_format(data)
        if other_format:
            raise ImageDecodeError("unsupported_format", path, other_format) from None
        raise ImageDecodeError("not_an_image", path, f"starts with {bytes(data[:8])!r}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        # Headers that start like an image and then break.
        raise ImageDecodeError("corrupt", path, str(e)) from None

    pixels = image.size[0] * image.size[1]
    if pixels > max_pixels:
        raise ImageDecodeError("too_large", path, f"{image.size[0]}x{image.size[1]} > {max_pixels} pixels")

    side = max(width, height)  # Square requests stay valid under any EXIF rotation.
    if image.format in ("JPEG", "MPO"):
        image.draft(None, (side, side))  # DCT-domain downscaling while decoding.
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        reason = "truncated" if "truncat" in str(e).lower() else "corrupt"
        raise ImageDecodeError(reason, path, str(e)) from None

    image = _upright(image)
    image = to_rgb(image, background)
    factor = min(image.size[0] // side, image.size[1] // side)
    if factor >= 2:  # Large PNGs etc.: a fast box reduction to within 2x of the target.
        image = image.reduce(factor)
    return np.asarray(image, dtype=np.uint8)


def jpeg_scale_for_tensorflow(data: bytes, image_size=224, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """The libjpeg scale denominator (1, 2, 4 or 8) at which `tf.io.decode_jpeg` can
    decode `data` exactly as `decode_near_size` would, or 0 when it cannot.

    This is the fast path of the tf.data preprocessor: a complete baseline JPEG in
    RGB or grayscale, upright (no EXIF rotation), within `max_pixels`. Only headers
    are parsed (tens of microseconds). Anything else (CMYK, progressive, rotated,
    truncated, not a JPEG) goes to Pillow, which converts it or reports why not; so
    TensorFlow never sees a file whose headers do not parse.
    """
    if not data.startswith(b"\xff\xd8\xff") or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return 0
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return 0
            if image.info.get("progressive") or image.info.get("progression"):
                return 0
            if "exif" in image.info and image.getexif().get(0x0112, 1) != 1:
                return 0
            width, height = image.size
    except Exception:  # Whatever the header parser raises: Pillow's path will report it.
        return 0
    if width * height > max_pixels:
        return 0
    side = max(_target_size(image_size))
    for scale in (8, 4, 2):  # libjpeg's scaled size is ceil(size / scale).
        if -(-width // scale) >= side and -(-height // scale) >= side:
            return scale
    return 1


def _any_format(data: bytes) -> str:
    """The format name if any Pillow plugin recognises `data` (header only), else ""."""
    try:
        with Image.open(io.BytesIO(data)) as other:
            return other.format or ""
    except Exception:  # Whatever a plugin raises, the answer is "not recognised".
        return ""


def _upright(image: Image.Image) -> Image.Image:
    """Applies the EXIF orientation; broken EXIF metadata is ignored, not fatal."""
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, ZeroDivisionError):
        return image


def to_rgb(image: Image.Image, background=DEFAULT_BACKGROUND) -> Image.Image:
    """Any Pillow image mode -> "RGB" (see the module docstring for the rules)."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        image = _to_8bit_gray(image)
        mode = "L"
    if mode == "RGB" and "transparency" not in image.info:
        return image
    has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
    if not has_alpha:
        return image.convert("RGB")  # CMYK, YCbCr, L, 1, P, LAB, HSV.
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit int/float) grayscale -> 8-bit "L" by scaling, not clipping.

    I;16* modes are scaled by their full range (65535 -> 255). Pillow opens some
    16-bit files as 32-bit "I"/"F" without saying what the range was; those are
    scaled by the smallest of 255, 65535 or their own maximum that covers the data.
    """
    values = np.asarray(image).astype(np.float64)
    if image.mode in _SIXTEEN_BIT_MODES:
        full_scale = 65535.0
    else:
        top = float(values.max()) if values.size else 0.0
        if image.mode == "F" and top <= 1.0:
            full_scale = 1.0
        elif top <= 255:
            full_scale = 255.0
        elif top <= 65535:
            full_scale = 65535.0
        else:
            full_scale = top
        values = np.clip(values, 0, None)
    gray = np.rint(values * (255.0 / full_scale)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L")
