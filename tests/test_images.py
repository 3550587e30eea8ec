"""The image preprocessor on real files of every kind that real datasets contain."""

import io
import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from palimix.preprocessors import image, image_files

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def photo(width=640, height=480, seed=0):
    """A photo-like RGB image: smooth gradients plus noise (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def encode(img, fmt, **kwargs):
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def left_right(left, right, size=(64, 32), mode="RGB"):
    """An image whose left half is `left` and right half `right`."""
    img = Image.new(mode, size, right)
    img.paste(left, (0, 0, size[0] // 2, size[1]))
    return img


def decoded(data, size=32, **kwargs):
    return image_files.decode(data, size, path="x", **kwargs)


def close(pixel, colour, tol=12):
    return np.all(np.abs(np.asarray(pixel, int) - np.asarray(colour, int)) <= tol)


# --- the pure decoder on odd images -------------------------------------------------


def test_jpeg_photo_is_resized_to_square_rgb():
    pixels = decoded(encode(photo(), "JPEG", quality=90), 224)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    # The gradient survives: red grows left to right, green top to bottom.
    assert pixels[112, 200, 0] > pixels[112, 20, 0] + 100
    assert pixels[200, 112, 1] > pixels[20, 112, 1] + 100


def test_non_square_size_is_height_width():
    assert decoded(encode(photo(), "PNG"), (48, 64)).shape == (48, 64, 3)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "TIFF"])
def test_other_formats(fmt):
    pixels = decoded(encode(left_right(RED, BLUE), fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    assert close(pixels[16, 2], RED) and close(pixels[16, 29], BLUE)


def test_gif_first_frame():
    frames = [Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert close(decoded(data)[10, 10], RED)


def test_exif_orientation_is_applied():
    # Stored wide with red on the left; orientation 6 means "rotate 90 degrees clockwise
    # to display", so upright the red half is on top.
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(left_right(RED, BLUE), "JPEG", quality=95, exif=exif)
    pixels = decoded(data)
    assert close(pixels[2, 16], RED, 40) and close(pixels[29, 16], BLUE, 40)


def test_cmyk_jpeg_is_converted():
    data = encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG", quality=95)  # Pure red ink mix.
    assert close(decoded(data)[10, 10], RED, 20)


def test_palette_with_and_without_transparency():
    plain = left_right(RED, BLUE).convert("P")
    assert close(decoded(encode(plain, "PNG"))[16, 2], RED)
    transparent = left_right(RED, BLUE).convert("P")
    transparent.info["transparency"] = transparent.getpixel((40, 16))  # The blue index.
    pixels = decoded(encode(transparent, "PNG", transparency=transparent.info["transparency"]))
    assert close(pixels[16, 2], RED) and close(pixels[16, 29], WHITE)


def test_alpha_is_composited_on_background():
    rgba = left_right((255, 0, 0, 255), (0, 0, 255, 0), mode="RGBA")  # Right half transparent.
    pixels = decoded(encode(rgba, "PNG"))
    assert close(pixels[16, 2], RED) and close(pixels[16, 29], WHITE)
    black = decoded(encode(rgba, "PNG"), background=(0, 0, 0))
    assert close(black[16, 29], (0, 0, 0))
    la = Image.new("LA", (32, 32), (10, 0))  # Fully transparent gray.
    assert close(decoded(encode(la, "PNG"))[5, 5], WHITE)


def test_grayscale_and_sixteen_bit_grayscale_are_scaled_not_clipped():
    gray8 = Image.new("L", (32, 32), 100)
    assert close(decoded(encode(gray8, "JPEG", quality=95))[5, 5], (100, 100, 100), 3)
    mid = np.full((32, 32), 32768, np.uint16)  # Half of 16-bit full scale.
    img16 = Image.fromarray(mid)
    assert img16.mode.startswith("I;16")
    pixels = decoded(encode(img16, "PNG"))
    assert close(pixels[5, 5], (128, 128, 128), 1)  # Not 255 (clipped) and not 0.
    one_bit = Image.new("1", (32, 32), 1)
    assert close(decoded(encode(one_bit, "PNG"))[0, 0], WHITE)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"This is a text file that someone named photo.jpg\n", "not_an_image"),
        (encode(photo(), "JPEG")[:3000], "truncated"),
        (encode(photo(64, 64), "PNG")[:200], "truncated"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "unsupported_format"),
    ],
    ids=["empty", "text", "truncated-jpeg", "truncated-png", "eps"],
)
def test_bad_files_raise_with_reason_and_name(data, reason):
    with pytest.raises(image_files.ImageDecodeError) as info:
        image_files.decode(data, 32, path="/data/photo.jpg")
    assert info.value.reason == reason
    assert "/data/photo.jpg" in str(info.value)


def test_decompression_bombs_are_refused_before_decoding():
    with pytest.raises(image_files.ImageDecodeError, match="too many pixels") as info:
        image_files.decode(encode(photo(64, 64), "PNG"), 32, max_pixels=64 * 63)
    assert info.value.reason == "too_large"
    # A real bomb: 400 megapixels in a small PNG; Pillow's header check stops it too.
    bomb = encode(Image.new("1", (20_000, 20_000)), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(image_files.ImageDecodeError) as info:
        image_files.decode(bomb, 32)
    assert info.value.reason == "too_large"


def test_jpeg_draft_decoding_matches_full_decoding():
    """DCT scaling must not change what the model sees beyond resampling noise."""
    data = encode(photo(1280, 960), "JPEG", quality=90)
    fast = decoded(data, 224).astype(float)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR), float)
    assert np.mean(np.abs(fast - full)) < 6


# --- the tf.data preprocessor --------------------------------------------------------


def dataset_of(items):
    """items: (encoded bytes, path) pairs -> a dataset of raw source records."""
    return tf.data.Dataset.from_tensor_slices(
        {
            "id": [str(i) for i in range(len(items))],
            "image/encoded": np.array([e for e, _ in items], dtype=object),
            "image/path": [p for _, p in items],
        }
    )


def test_decode_image_features_and_value_range():
    good = encode(photo(), "JPEG")
    ds = image.decode_image(dataset_of([(good, "a.jpg"), (b"", "")]), image_size=64, task_name="t_range")
    examples = list(ds.as_numpy_iterator())
    assert [e["id"] for e in examples] == [b"0", b"1"]
    first, text_only = examples
    assert "image/encoded" not in first and first["image/path"] == b"a.jpg"
    assert first["image"].shape == (64, 64, 3) and first["image"].dtype == np.float32
    assert first["image"].min() >= -1 and first["image"].max() <= 1 and first["image"].std() > 0.1
    assert first["has_image"] == 1
    assert text_only["has_image"] == 0 and not text_only["image"].any()
    assert ds.element_spec["image"].shape == (64, 64, 3)
    assert image.num_dropped_images("t_range") == 0


def test_bad_images_are_dropped_counted_and_logged(tmp_path, caplog):
    image.reset_dropped_image_counts("t_bad")
    good = encode(photo(), "JPEG")
    missing = str(tmp_path / "missing.jpg")
    empty_file = tmp_path / "empty.jpg"
    empty_file.write_bytes(b"")
    items = [
        (good, "good1.jpg"),
        (good[:2000], "truncated.jpg"),
        (b"hello", "notes.jpg"),
        (b"", missing),
        (b"", str(empty_file)),
        (good, "good2.jpg"),
    ]
    with caplog.at_level(logging.WARNING, logger="palimix.preprocessors.image"):
        ds = image.decode_image(dataset_of(items), image_size=32, task_name="t_bad")
        kept = [e["image/path"] for e in ds.as_numpy_iterator()]
    assert kept == [b"good1.jpg", b"good2.jpg"]
    assert image.dropped_image_counts()["t_bad"] == {"truncated": 1, "not_an_image": 1, "missing": 1, "empty": 1}
    assert image.num_dropped_images("t_bad") == 4
    for name in ("truncated.jpg", "notes.jpg", "missing.jpg", "empty.jpg"):
        assert name in caplog.text
    image.reset_dropped_image_counts("t_bad")
    assert "t_bad" not in image.dropped_image_counts()


def test_strict_raises_with_file_name():
    ds = image.decode_image(dataset_of([(b"not an image", "/data/broken.jpg")]), image_size=32, strict=True)
    with pytest.raises(tf.errors.OpError, match="broken.jpg"):
        list(ds)


def test_decoding_is_deterministic_in_parallel():
    items = [(encode(photo(96, 64, seed=i), "JPEG"), f"{i}.jpg") for i in range(24)]
    items[5] = (b"junk", "junk.jpg")

    def run():
        ds = image.decode_image(dataset_of(items), image_size=32, task_name="t_det", num_parallel_calls=8)
        return [(e["id"], e["image"]) for e in ds.as_numpy_iterator()]

    first, second = run(), run()
    assert [i for i, _ in first] == [str(i).encode() for i in range(24) if i != 5]
    assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(first, second))


def test_fast_path_only_for_clean_baseline_jpegs():
    scale = image_files.jpeg_scale_for_tensorflow
    assert scale(encode(photo(), "JPEG"), 224) == 2  # 640x480 -> decoded at 320x240.
    assert scale(encode(photo(), "JPEG"), 448) == 1
    assert scale(encode(photo(2000, 1800), "JPEG"), 224) == 8
    assert scale(encode(photo(), "JPEG", progressive=True), 224) == 0
    assert scale(encode(Image.new("CMYK", (64, 64)), "JPEG"), 32) == 0
    exif = Image.Exif()
    exif[0x0112] = 6
    assert scale(encode(photo(), "JPEG", exif=exif), 224) == 0
    upright = Image.Exif()
    upright[0x0112] = 1
    assert scale(encode(photo(), "JPEG", exif=upright), 224) == 2
    assert scale(encode(photo(), "JPEG")[:5000], 224) == 0  # Truncated: Pillow reports it.
    assert scale(encode(photo(), "PNG"), 224) == 0
    assert scale(encode(photo(), "JPEG"), 224, max_pixels=1000) == 0


def test_tensorflow_and_pillow_paths_agree():
    """The same picture through the TF JPEG path and through Pillow (progressive)."""
    picture = photo(640, 480, seed=3)
    items = [(encode(picture, "JPEG", quality=95), "fast.jpg"), (encode(picture, "JPEG", quality=95, progressive=True), "slow.jpg")]
    fast, slow = [e["image"] for e in image.decode_image(dataset_of(items), image_size=224).as_numpy_iterator()]
    assert np.mean(np.abs(fast - slow)) < 0.02  # In [-1, 1] units: about 2/255.


def _corrupt_tables_jpeg():
    """A JPEG whose headers parse (the fast path takes it) but whose Huffman table is
    bogus: tf.io.decode_jpeg raises on it (found by fuzzing)."""
    data = bytearray(encode(photo(96, 64), "JPEG"))
    table = data.index(b"\xff\xc4") + 5  # The first DHT's code-length counts.
    data[table:table + 16] = b"\xff" * 16  # Far more codes than 16-bit lengths allow.
    data = bytes(data)
    assert image_files.jpeg_scale_for_tensorflow(data, 32) != 0
    with pytest.raises(tf.errors.OpError):
        tf.io.decode_jpeg(data, channels=3)
    return data


def test_jpegs_that_fail_inside_tensorflow_are_counted_not_fatal(caplog):
    """Anywhere in the data, also at the very end, and in a task's fused pipeline."""
    image.reset_dropped_image_counts("t_lost")
    bad = _corrupt_tables_jpeg()
    good = encode(photo(96, 64), "JPEG")
    items = [(good, "0.jpg"), (bad, "1.jpg"), (bad, "2.jpg"), (good, "3.jpg"), (bad, "4.jpg")] + [
        (good, f"{i}.jpg") for i in range(5, 40)] + [(bad, "40.jpg"), (bad, "41.jpg")]
    with caplog.at_level(logging.WARNING, logger="palimix.preprocessors.image"):
        ds = image.decode_image(dataset_of(items), image_size=32, task_name="t_lost")
        kept = [e["id"] for e in ds.as_numpy_iterator()]
    assert kept == [str(i).encode() for i in [0, 3] + list(range(5, 40))]
    assert image.dropped_image_counts()["t_lost"] == {"corrupt": 5}
    assert "before '3'" in caplog.text and "at the end of the data" in caplog.text
    # A second pass counts again; strict mode stops at the first one.
    assert len(list(ds)) == 37 and image.num_dropped_images("t_lost") == 10
    with pytest.raises(tf.errors.OpError):
        list(image.decode_image(dataset_of(items), image_size=32, strict=True))
