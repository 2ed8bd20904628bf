"""Tests for siglite.preprocess.image: exactness against transformers and the seed letterbox recipe, robust decoding.

Every image is built on the fly (PIL / numpy / cv2) under tmp_path; nothing is downloaded or committed.
"""

from __future__ import annotations

import functools
import io
import json
import re
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import PIL.ImageFile
import pytest

from siglite.errors import ImageError, LoadError, SigliteError
from siglite.preprocess.image import (
    MAX_PIXELS_DEFAULT,
    PREPROCESS,
    ImageConfig,
    decode,
    from_bgr,
    letterbox,
    preprocess_batch,
    resize,
)

RNG_SEED = 1234


def _noise(h: int, w: int, c: int = 3, seed: int = RNG_SEED) -> np.ndarray:
    """Random pixels plus a gradient, so both fine detail and smooth regions reach the resamplers."""
    rng = np.random.default_rng(seed + h * 7919 + w * 31 + c)
    grad = (np.linspace(0, 255, w)[None, :, None] + np.linspace(0, 255, h)[:, None, None]) / 2
    noise = rng.integers(-40, 41, (h, w, c))
    return np.clip(grad + noise, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------------
# resize == transformers SiglipImageProcessorPil
# --------------------------------------------------------------------------------------------------------------------

# Shaped like real preprocessor_config.json files: a SigLIP 384 one and a bilinear, non-square, ImageNet-stats one.
HF_CONFIGS = {
    "siglip384_bicubic": {
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5],
        "processor_class": "SiglipProcessor",
        "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"height": 384, "width": 384},
    },
    "bilinear_224x320_imagenet": {
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "resample": 2, "rescale_factor": 0.00392156862745098,
        "size": {"height": 224, "width": 320},
    },
    "no_normalize_bicubic_96": {
        "do_normalize": False, "do_rescale": True, "do_resize": True, "resample": 3,
        "rescale_factor": 0.00392156862745098, "size": {"height": 96, "width": 96},
    },
}
RESIZE_SHAPES = [(1, 1), (7, 3000), (3000, 7), (700, 500), (50, 80), (384, 384), (383, 385)]
PIL_MODES = ["RGB", "L", "RGBA", "LA", "P", "P+transparency", "CMYK", "1"]


@functools.cache
def _pil_image(h: int, w: int, mode: str) -> PIL.Image.Image:
    """Cached (tests must not mutate it): building these is slower than processing them."""
    rgba = _noise(h, w, 4)
    rgba[..., 3] = np.where(np.arange(w)[None, :] % 3 == 0, 0, rgba[..., 3])  # fully transparent columns too
    if mode.startswith("P"):
        # A random palette indexed directly: quantizing would be slow and add nothing here.
        img = PIL.Image.fromarray(rgba[..., 0], "P")
        img.putpalette(np.random.default_rng(h + w).integers(0, 256, 768, dtype=np.uint8).tobytes())
        if mode == "P+transparency":
            img.info["transparency"] = int(rgba[0, 0, 0])
        return img
    return PIL.Image.fromarray(rgba, "RGBA").convert(mode)


@pytest.fixture(scope="module")
def hf_processors():
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    return {name: SiglipImageProcessorPil(**cfg) for name, cfg in HF_CONFIGS.items()}


def _hf_pixels(processor, image, **kwargs) -> np.ndarray:
    out = processor(images=image, return_tensors="np", **kwargs)["pixel_values"][0]
    return np.asarray(out, dtype=np.float32)


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_resize_matches_transformers(hf_processors, name):
    processor = hf_processors[name]
    cfg = ImageConfig.from_hf(json.loads(processor.to_json_string()))
    assert cfg == ImageConfig.from_hf(HF_CONFIGS[name])
    worst, worst_case = 0.0, None
    for h, w in RESIZE_SHAPES:
        cases = [(f"PIL {mode}", img, img, {}) for mode in PIL_MODES for img in [_pil_image(h, w, mode)]]
        # transformers wants (H, W, 1) for gray arrays; siglite also takes plain (H, W).
        cases += [(f"array {c}ch", arr[..., 0] if c == 1 else arr, arr, {"input_data_format": "channels_last"})
                  for c in (1, 3, 4) for arr in [_noise(h, w, c)]]
        for label, image, ref_image, kwargs in cases:
            ours = resize(decode(image), cfg)
            ref = _hf_pixels(processor, ref_image, **kwargs)
            assert ours.shape == ref.shape == (3, cfg.height, cfg.width)
            assert ours.dtype == np.float32 and ours.flags.c_contiguous
            diff = float(np.abs(ours - ref).max())
            if diff > worst:
                worst, worst_case = diff, f"{label} {h}x{w}"
    print(f"\nresize vs transformers [{name}]: worst max|Δ| = {worst:.3g} ({worst_case or 'every case exact'})")
    # The brief allows 1e-6, but both sides run the same PIL and numpy, so anything above 0 is a real divergence
    # (e.g. a float64 normalize would still pass 1e-6 at ~2.4e-7).
    assert worst == 0.0, worst_case


def test_resize_without_resize_keeps_size_and_matches(hf_processors):
    processor = hf_processors["siglip384_bicubic"]
    cfg = ImageConfig.from_hf({**HF_CONFIGS["siglip384_bicubic"], "do_resize": False})
    image = _noise(31, 47)
    ours = resize(image, cfg)
    assert ours.shape == (3, 31, 47)
    np.testing.assert_array_equal(ours, _hf_pixels(processor, PIL.Image.fromarray(image), do_resize=False))


def test_resize_rejects_non_rgb_arrays():
    cfg = ImageConfig(8, 8)
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(ImageError, match=r"^<array shape="):
            resize(bad, cfg)


# --------------------------------------------------------------------------------------------------------------------
# letterbox == seed recipe
# --------------------------------------------------------------------------------------------------------------------


def seed_preprocess(image, target_size=384):
    """Reference, copied verbatim from shared/seeds/000_b64b46afb15a8577.txt (BGR input)."""
    # HWC, BGR, 0~255 -> (1, 3, 384, 384), RGB, -1~1
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    h, w = image.shape[:2]
    scale = target_size / max(h, w)
    new_h, new_w = int(h * scale), int(w * scale)
    image_resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    pad_h = target_size - new_h
    pad_w = target_size - new_w
    top = pad_h // 2
    bottom = pad_h - top
    left = pad_w // 2
    right = pad_w - left
    image_padded = cv2.copyMakeBorder(image_resized, top, bottom, left, right, cv2.BORDER_CONSTANT,
                                      value=[127, 127, 127])
    image_chw = np.transpose(image_padded, (2, 0, 1))
    image_nchw = np.expand_dims(image_chw, axis=0)
    image_normalized = image_nchw.astype(np.float32) / 127.5 - 1.0
    return image_normalized


@pytest.mark.parametrize("target", [384, 224])
def test_letterbox_bit_exact_vs_seed_recipe(target):
    cfg = ImageConfig(target, target)
    # landscape, portrait, already square (at / above / below target), smaller than target, extreme, odd sizes
    # (the recipe itself crashes when a side rounds to 0 px, so the extremes stop at 5x1000)
    shapes = [(480, 640), (640, 480), (384, 384), (1000, 1000), (100, 100), (100, 50), (37, 23), (5, 1000),
              (1000, 5), (1, 1), (385, 383), (224, 300), (767, 1025)]
    worst = 0.0
    for h, w in shapes:
        bgr = _noise(h, w)
        ref = seed_preprocess(bgr, target_size=target)[0]
        ours = letterbox(from_bgr(bgr), cfg)
        assert ours.shape == ref.shape == (3, target, target)
        assert ours.dtype == np.float32 and ours.flags.c_contiguous
        worst = max(worst, float(np.abs(ours - ref).max()))
        np.testing.assert_array_equal(ours, ref, err_msg=f"{h}x{w} -> {target}")
    print(f"\nletterbox vs seed recipe (target {target}): worst max|Δ| = {worst}")
    assert worst == 0.0


def test_letterbox_non_square_target_centres_and_pads():
    cfg = ImageConfig(height=200, width=300)
    image = np.full((100, 100, 3), 255, np.uint8)  # scale = min(2, 3) = 2 -> 200x200, 50 px grey each side
    out = letterbox(image, cfg)
    assert out.shape == (3, 200, 300)
    grey = np.float32(127) / 127.5 - 1.0
    assert np.all(out[:, :, :50] == grey) and np.all(out[:, :, 250:] == grey)
    assert np.all(out[:, :, 50:250] == 1.0)
    wide = letterbox(np.zeros((10, 600, 3), np.uint8), cfg)  # scale = min(20, 0.5) -> 5x300, rows 97..101
    assert np.all(wide[:, 97:102, :] == -1.0) and np.all(wide[:, :97] == grey) and np.all(wide[:, 102:] == grey)


def test_letterbox_degenerate_aspect_keeps_one_pixel():
    out = letterbox(np.zeros((1, 5000, 3), np.uint8), ImageConfig(64, 64))  # int(1 * 64 / 5000) == 0 in the recipe
    assert out.shape == (3, 64, 64)
    assert np.all(out[:, 31, :] == -1.0)


def test_letterbox_custom_normalization_uses_transformers_math():
    cfg = ImageConfig(16, 16, image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225))
    image = _noise(16, 16)
    x = (image.astype(np.float64) * (1 / 255)).astype(np.float32)
    expected = ((x - np.array(cfg.image_mean, np.float32)) / np.array(cfg.image_std, np.float32)).transpose(2, 0, 1)
    np.testing.assert_array_equal(letterbox(image, cfg), expected)


# --------------------------------------------------------------------------------------------------------------------
# decode: formats and modes
# --------------------------------------------------------------------------------------------------------------------


def _save(img: PIL.Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _quadrants() -> np.ndarray:
    """32x64 (h x w) image with four flat colours, 8-pixel aligned so JPEG keeps them nearly exact."""
    a = np.zeros((32, 64, 3), np.uint8)
    a[:16, :32], a[:16, 32:], a[16:, :32], a[16:, 32:] = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
    return a


@pytest.mark.parametrize("orientation, k", [(6, -1), (8, 1), (3, 2), (1, 0)])
def test_decode_applies_exif_orientation(tmp_path, orientation, k):
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    path = _save(PIL.Image.fromarray(_quadrants()), tmp_path / "o.jpg", exif=exif, quality=95)
    out = decode(path)
    expected = np.rot90(_quadrants(), k=k)  # k=-1: clockwise, what orientation 6 asks the viewer to do
    assert out.shape == expected.shape
    h, w = out.shape[:2]
    for rows in (slice(2, h // 2 - 2), slice(h // 2 + 2, h - 2)):  # quadrant interiors, away from JPEG edge blur
        for cols in (slice(2, w // 2 - 2), slice(w // 2 + 2, w - 2)):
            assert np.abs(out[rows, cols].astype(int) - expected[rows, cols]).max() <= 8
    # The same file as bytes and as an opened PIL image gives the same pixels.
    np.testing.assert_array_equal(decode(path.read_bytes()), out)
    with PIL.Image.open(path) as img:
        np.testing.assert_array_equal(decode(img), out)


def test_decode_path_types_and_output_contract(tmp_path):
    image = _noise(20, 30)
    path = _save(PIL.Image.fromarray(image), tmp_path / "x.png")
    for src in (path, str(path), path.read_bytes(), bytearray(path.read_bytes()), PIL.Image.fromarray(image), image):
        out = decode(src)
        assert out.dtype == np.uint8 and out.shape == (20, 30, 3) and out.flags.c_contiguous
        np.testing.assert_array_equal(out, image)
    assert decode(image) is not image  # a copy: callers may mutate it


def test_decode_grayscale_and_one_bit(tmp_path):
    gray = _noise(9, 11, 1)[..., 0]
    out = decode(_save(PIL.Image.fromarray(gray, "L"), tmp_path / "g.png"))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=-1))
    bits = PIL.Image.fromarray(gray > 128)
    assert bits.mode == "1"
    out = decode(_save(bits, tmp_path / "b.png"))
    np.testing.assert_array_equal(out[..., 0], np.where(gray > 128, 255, 0))


def test_decode_palette_with_transparency_composites_onto_background(tmp_path):
    img = PIL.Image.new("P", (4, 2))
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.putpixel((0, 0), 1)
    path = _save(img, tmp_path / "p.png", transparency=0)
    out = decode(path)
    assert tuple(out[0, 0]) == (200, 100, 50)
    assert tuple(out[1, 3]) == (255, 255, 255)  # transparent index -> white, like transformers
    assert tuple(decode(path, background=(1, 2, 3))[1, 3]) == (1, 2, 3)
    opaque = img.copy()
    opaque.info.pop("transparency", None)
    assert tuple(decode(_save(opaque, tmp_path / "q.png"))[1, 3]) == (10, 20, 30)


def test_decode_rgba_and_la_alpha_composited(tmp_path):
    rgba = np.array([[[200, 100, 0, 0], [200, 100, 0, 255], [200, 100, 0, 128]]], np.uint8)
    path = _save(PIL.Image.fromarray(rgba, "RGBA"), tmp_path / "a.png")
    out = decode(path)
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (200, 100, 0)
    assert np.all(np.abs(out[0, 2].astype(int) - [227, 177, 127]) <= 1)
    assert tuple(decode(path, background=(0, 0, 0))[0, 0]) == (0, 0, 0)
    la = PIL.Image.fromarray(np.array([[[50, 0], [50, 255]]], np.uint8), "LA")
    out = decode(_save(la, tmp_path / "la.png"), background=(10, 20, 30))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[0, 1]) == (50, 50, 50)
    premultiplied = PIL.Image.fromarray(np.array([[[50, 255], [0, 0]]], np.uint8), "LA").convert("La")
    assert tuple(decode(premultiplied)[0, 1]) == (255, 255, 255)


def test_decode_cmyk_jpeg(tmp_path):
    cmyk = PIL.Image.fromarray(_noise(16, 24, 4), "CMYK")
    path = _save(cmyk, tmp_path / "c.jpg", quality=95)
    with PIL.Image.open(path) as img:
        assert img.mode == "CMYK"
        expected = np.array(img.convert("RGB"))
    np.testing.assert_array_equal(decode(path), expected)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_decode_16bit_gray_is_scaled_not_clipped(tmp_path, suffix):
    values = np.array([[0, 128, 129, 255, 257, 1000, 32896, 65534, 65535]], np.uint16)
    path = _save(PIL.Image.fromarray(values), tmp_path / f"g16{suffix}")
    with PIL.Image.open(path) as img:
        assert img.mode.startswith("I")
    out = decode(path)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 1, 1, 4, 128, 255, 255])  # round(v / 257)
    assert np.all(out[..., 0] == out[..., 2])


def test_decode_int32_mode_read_as_16bit():
    img = PIL.Image.fromarray(np.array([[-5, 0, 257, 65535, 70000]], np.int32), "I")
    np.testing.assert_array_equal(decode(img)[0, :, 0], [0, 0, 1, 255, 255])


def test_decode_big_endian_16bit():
    img = PIL.Image.frombytes("I;16B", (3, 1), np.array([0, 257, 65535], ">u2").tobytes())
    np.testing.assert_array_equal(decode(img)[0, :, 1], [0, 1, 255])


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_decode_16bit_rgb_uses_pils_8bit_decoding(tmp_path, suffix):
    rgb16 = np.array([[[0, 256, 65535], [1000, 32768, 512]]], np.uint16)
    path = tmp_path / f"c16{suffix}"
    assert cv2.imwrite(str(path), rgb16[..., ::-1])  # cv2 writes BGR order
    out = decode(path)
    # PIL reads 16-bit RGB as 8-bit RGB, keeping the high byte; siglite takes what PIL gives.
    np.testing.assert_array_equal(out, (rgb16 >> 8).astype(np.uint8))


def test_decode_float_mode(tmp_path):
    values = np.array([[-3.0, 0.0, 0.7, 100.2, 254.9, 300.0, np.nan, np.inf]], np.float32)
    path = _save(PIL.Image.fromarray(values, "F"), tmp_path / "f.tif")
    out = decode(path)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 0, 100, 254, 255, 0, 255])
    finite = PIL.Image.fromarray(values[:, :6], "F")
    np.testing.assert_array_equal(decode(finite)[..., 0], np.array(finite.convert("L")))  # same as PIL for finite


@pytest.mark.parametrize("fmt, kwargs", [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {})])
def test_decode_animation_takes_first_frame(tmp_path, fmt, kwargs):
    frames = [PIL.Image.new("RGB", (8, 6), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, **kwargs)
    with PIL.Image.open(path) as img:
        assert getattr(img, "n_frames", 1) == 3
    out = decode(path)
    assert out.shape == (6, 8, 3)
    assert np.all(out == np.array([255, 0, 0], np.uint8))


# --------------------------------------------------------------------------------------------------------------------
# decode: pixel limit
# --------------------------------------------------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but carries almost no pixel data: decoding it would fail."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")


def test_pixel_limit_boundary_and_disable(tmp_path):
    path = _save(PIL.Image.fromarray(_noise(100, 100)), tmp_path / "x.png")
    assert decode(path, max_pixels=10_000).shape == (100, 100, 3)
    with pytest.raises(ImageError, match=r"x\.png: .*100x100 = 10000 pixels.*exceeds the pixel limit of 9999"):
        decode(path, max_pixels=9_999)
    assert decode(path, max_pixels=None).shape == (100, 100, 3)
    with pytest.raises(ImageError, match="exceeds the pixel limit"):
        decode(_noise(100, 100), max_pixels=9_999)  # arrays and PIL images are held to the same limit
    with pytest.raises(ImageError, match="exceeds the pixel limit"):
        decode(PIL.Image.fromarray(_noise(100, 100)), max_pixels=9_999)


def test_pixel_limit_checked_from_header_before_decoding():
    data = _png_header_only(64, 64)
    with pytest.raises(ImageError, match="truncated"):
        decode(data)  # proves the file really is undecodable ...
    with pytest.raises(ImageError, match="exceeds the pixel limit"):
        decode(data, max_pixels=100)  # ... so this error came from the header alone


def test_pixel_limit_default_and_pil_bomb_error():
    assert MAX_PIXELS_DEFAULT == 178_956_970
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match=r"^<bytes len=\d+>: .*exceeds the pixel limit"):
            decode(_png_header_only(10_000, 10_000), max_pixels=50_000_000)  # in PIL's warning band
        with pytest.raises(ImageError, match="exceeds the pixel limit"):
            decode(_png_header_only(20_000, 20_000))  # above PIL's hard limit: DecompressionBombError
        with pytest.raises(ImageError, match="exceeds the pixel limit"):
            decode(_png_header_only(20_000, 20_000), max_pixels=None)  # PIL's own global limit still holds
    assert not [w for w in caught if issubclass(w.category, PIL.Image.DecompressionBombWarning)]


def test_bad_max_pixels_or_background_is_value_error():
    with pytest.raises(ValueError):
        decode(_noise(2, 2), max_pixels=0)
    with pytest.raises(ValueError):
        decode(_noise(2, 2), background=(0, 0))
    with pytest.raises(ValueError):
        decode(_noise(2, 2), background=(0, 0, 256))


# --------------------------------------------------------------------------------------------------------------------
# decode: bad inputs -> one-line ImageError naming the input
# --------------------------------------------------------------------------------------------------------------------


def _assert_image_error(src, source: str, reason_pattern: str):
    with pytest.raises(ImageError) as info:
        decode(src)
    err = info.value
    assert isinstance(err, SigliteError)
    assert err.source == source and str(err).startswith(f"{source}: ")
    assert "\n" not in str(err)
    assert re.search(reason_pattern, err.reason), err.reason


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_raises(tmp_path, fmt):
    assert PIL.ImageFile.LOAD_TRUNCATED_IMAGES is False
    buf = io.BytesIO()
    PIL.Image.fromarray(_noise(64, 64)).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    _assert_image_error(path, str(path), "cannot decode|cannot open")
    _assert_image_error(data[: len(data) // 2], f"<bytes len={len(data) // 2}>", "cannot decode|cannot open")


def test_missing_directory_empty_text_corrupt(tmp_path):
    _assert_image_error(tmp_path / "nope.jpg", str(tmp_path / "nope.jpg"), "no such file")
    _assert_image_error(str(tmp_path), str(tmp_path), "directory")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _assert_image_error(empty, str(empty), "empty file")
    text = tmp_path / "notes.txt"
    text.write_text("hello, not an image\n")
    _assert_image_error(text, str(text), "not a recognised image")
    _assert_image_error(b"", "<bytes len=0>", "empty")
    junk = np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes()
    _assert_image_error(junk, "<bytes len=500>", "not a recognised image")
    corrupt_png = bytearray(_png_header_only(8, 8))
    corrupt_png[20] ^= 0xFF  # breaks the IHDR CRC
    _assert_image_error(bytes(corrupt_png), f"<bytes len={len(corrupt_png)}>", "cannot")


def test_unsupported_types_and_closed_pil_image(tmp_path):
    _assert_image_error(42, "<int>", "unsupported input type")
    path = _save(PIL.Image.fromarray(_noise(8, 8)), tmp_path / "x.jpg")
    img = PIL.Image.open(path)
    img.close()
    _assert_image_error(img, "<PIL image>", "cannot")


# --------------------------------------------------------------------------------------------------------------------
# decode: ndarray inputs and from_bgr
# --------------------------------------------------------------------------------------------------------------------


def test_decode_arrays_gray_and_rgba_match_transformers_convert_to_rgb():
    from transformers.image_transforms import convert_to_rgb

    gray = _noise(5, 6, 1)
    np.testing.assert_array_equal(decode(gray[..., 0]), np.repeat(gray, 3, axis=-1))
    np.testing.assert_array_equal(decode(gray), np.repeat(gray, 3, axis=-1))
    rgba = _noise(5, 6, 4)
    ref = convert_to_rgb(rgba, return_numpy=True, input_data_format="channels_last")
    np.testing.assert_array_equal(decode(rgba), ref)
    black = decode(rgba, background=(0, 0, 0))
    np.testing.assert_array_equal(black, np.round(rgba[..., 3:] / 255 * rgba[..., :3]).astype(np.uint8))
    strided = _noise(5, 6)[:, ::-1]
    out = decode(strided)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, strided)


@pytest.mark.parametrize("bad, pattern", [
    (np.zeros((4, 4, 3), np.float32), "dtype float32"),
    (np.zeros((4, 4, 3), np.uint16), "dtype uint16"),
    (np.zeros((4, 4, 2), np.uint8), r"got \(4, 4, 2\)"),
    (np.zeros((2, 4, 4, 3), np.uint8), r"got \(2, 4, 4, 3\)"),
    (np.zeros((4,), np.uint8), r"got \(4,\)"),
    (np.zeros((0, 4, 3), np.uint8), "empty image"),
])
def test_decode_bad_arrays(bad, pattern):
    _assert_image_error(bad, f"<array shape={bad.shape} dtype={bad.dtype}>", pattern)


def test_from_bgr():
    bgr = _noise(4, 5)
    rgb = from_bgr(bgr)
    assert rgb.flags.c_contiguous and not np.shares_memory(rgb, bgr)
    np.testing.assert_array_equal(rgb, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    bgra = _noise(4, 5, 4)
    np.testing.assert_array_equal(from_bgr(bgra), cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGBA))
    gray = _noise(4, 5, 1)[..., 0]
    np.testing.assert_array_equal(from_bgr(gray), gray)
    with pytest.raises(ImageError, match="dtype float64"):
        from_bgr(np.zeros((2, 2, 3)))


# --------------------------------------------------------------------------------------------------------------------
# preprocess_batch
# --------------------------------------------------------------------------------------------------------------------


def test_preprocess_batch_skip_and_raise(tmp_path):
    cfg = ImageConfig(32, 32)
    good = [_noise(40, 50), PIL.Image.fromarray(_noise(20, 10)),
            _save(PIL.Image.fromarray(_noise(9, 9)), tmp_path / "a.png")]
    images = [good[0], b"junk", good[1], tmp_path / "missing.png", good[2]]
    for mode, fn in PREPROCESS.items():
        pixels, ok, failures = preprocess_batch(images, cfg, mode, on_error="skip")
        assert pixels.shape == (3, 3, 32, 32) and pixels.dtype == np.float32
        assert ok == [0, 2, 4]
        assert [i for i, _ in failures] == [1, 3]
        assert failures[0][1].startswith("<bytes len=4>: ") and "missing.png: no such file" in failures[1][1]
        assert all("\n" not in reason for _, reason in failures)
        for row, src in zip(pixels, good, strict=True):
            np.testing.assert_array_equal(row, fn(decode(src), cfg))
    with pytest.raises(ImageError, match=r"^<bytes len=4>: "):
        preprocess_batch(images, cfg)


def test_preprocess_batch_edges():
    cfg = ImageConfig(8, 12)
    pixels, ok, failures = preprocess_batch([], cfg)
    assert pixels.shape == (0, 3, 8, 12) and pixels.dtype == np.float32 and ok == [] and failures == []
    with pytest.raises(ValueError, match="letterbox.*resize"):
        preprocess_batch([_noise(4, 4)], cfg, "crop")
    with pytest.raises(ValueError, match="on_error"):
        preprocess_batch([_noise(4, 4)], cfg, on_error="ignore")
    with pytest.raises(ImageError, match="exceeds the pixel limit"):
        preprocess_batch([_noise(10, 10)], cfg, max_pixels=50)
    white = preprocess_batch([_noise(4, 4, 4) * np.uint8(0)], cfg, background=(255, 255, 255))[0]
    assert np.all(white == 1.0)
    fixed = ImageConfig(8, 12, do_resize=False)
    pixels, ok, failures = preprocess_batch([_noise(8, 12), _noise(9, 12)], fixed, on_error="skip")
    assert ok == [0] and failures[0][0] == 1 and "do_resize=False" in failures[0][1]


# --------------------------------------------------------------------------------------------------------------------
# ImageConfig
# --------------------------------------------------------------------------------------------------------------------


def test_image_config_from_hf_variants():
    base = ImageConfig.from_hf(HF_CONFIGS["siglip384_bicubic"])
    assert base == ImageConfig(384, 384)
    assert ImageConfig.from_hf({"size": {"shortest_edge": 256}}).height == 256
    assert ImageConfig.from_hf({"size": {"shortest_edge": 256}}).width == 256
    assert (ImageConfig.from_hf({"size": 192}).height, ImageConfig.from_hf({"size": 192}).width) == (192, 192)
    assert ImageConfig.from_hf({}).height == 224  # SiglipImageProcessor's default size
    odd = ImageConfig.from_hf({"size": {"height": 10, "width": 20}, "image_mean": 0.5, "image_std": 0.25,
                               "resample": 2, "do_convert_rgb": None, "crop_size": {"height": 1}, "whatever": 1})
    assert (odd.height, odd.width, odd.resample, odd.do_convert_rgb) == (10, 20, 2, True)
    assert odd.image_mean == (0.5, 0.5, 0.5) and odd.image_std == (0.25, 0.25, 0.25)
    with pytest.raises(LoadError, match="size"):
        ImageConfig.from_hf({"size": {"longest_edge": 5}})
    with pytest.raises(LoadError, match="image_std"):
        ImageConfig.from_hf({"size": 8, "image_std": [0, 1, 1]})


def test_image_config_dict_round_trip_and_validation():
    cfg = ImageConfig(224, 320, resample=2, do_normalize=False, image_mean=[0.1, 0.2, 0.3])
    assert cfg.image_mean == (0.1, 0.2, 0.3)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert ImageConfig.from_dict(d) == cfg
    assert hash(ImageConfig.from_dict(d)) == hash(cfg)
    with pytest.raises(ValueError, match="unknown keys"):
        ImageConfig.from_dict({**d, "hieght": 3})
    for bad in ({"height": 0, "width": 4}, {"height": 4, "width": 4, "resample": 9},
                {"height": 4, "width": 4, "image_mean": (0.5, 0.5)}, {"height": 4.0, "width": 4}):
        with pytest.raises(ValueError):
            ImageConfig(**bad)
