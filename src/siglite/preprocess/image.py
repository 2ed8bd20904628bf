"""Image decoding and SigLIP pixel preprocessing.

Two preprocessing modes turn a decoded RGB image into a ``(3, H, W)`` float32 array:

* ``resize``: a port of transformers' SigLIP image processor (PIL backend), bit-for-bit:
  ``transformers/models/siglip/image_processing_pil_siglip.py`` (``SiglipImageProcessorPil``) with the resize,
  rescale and normalize steps of ``transformers/image_processing_backends.py`` (``PilBackend``) and
  ``transformers/image_transforms.py`` (``resize``, ``rescale``, ``normalize``, ``convert_to_rgb``), transformers 5.23.
* ``letterbox``: aspect-preserving ``cv2.INTER_AREA`` resize, centred on a grey (127) canvas, ported from the seed
  recipe in ``shared/seeds/000_b64b46afb15a8577.txt``.

`decode` turns paths, bytes, PIL images and arrays into one canonical form (HWC uint8 RGB), so both modes only ever see
that, and every unreadable input becomes an `ImageError` that names it.
"""

from __future__ import annotations

import dataclasses
import math
import io
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import PIL.Image
import PIL.ImageOps

from siglite.errors import ImageError, LoadError

ImageInput = str | os.PathLike | bytes | PIL.Image.Image | np.ndarray

# Equal to the size at which PIL itself refuses to open an image (2 * PIL.Image.MAX_IMAGE_PIXELS by default).
MAX_PIXELS_DEFAULT = 178_956_970

_WHITE = (255, 255, 255)
_RESAMPLE_CODES = (0, 1, 2, 3, 4, 5)  # PIL: NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING
_SIGLIP_DEFAULT_SIZE = 224  # SiglipImageProcessorPil.size, used when a preprocessor config has no "size"
_WIDE_INT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_LETTERBOX_FILL = 127  # seed recipe's border value


# --------------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------------


def check_image_config(cfg, positive: tuple[str, ...]) -> None:
    """The checks every frozen image config shares (`ImageConfig`, `naflex.NaflexConfig`): mean/std as three floats
    (lists arrive from JSON; tuples keep the config hashable and comparable), `positive` fields positive ints, a PIL
    resample code, no zero std. Raises ValueError naming the class and field."""
    kind = type(cfg).__name__
    object.__setattr__(cfg, "image_mean", _three_floats("image_mean", cfg.image_mean))
    object.__setattr__(cfg, "image_std", _three_floats("image_std", cfg.image_std))
    for name in positive:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{kind}.{name} must be a positive int, got {value!r}")
    if cfg.resample not in _RESAMPLE_CODES:
        raise ValueError(f"{kind}.resample must be a PIL code {_RESAMPLE_CODES}, got {cfg.resample!r}")
    if any(s == 0 for s in cfg.image_std):
        raise ValueError(f"{kind}.image_std must not contain 0, got {cfg.image_std}")


@dataclass(frozen=True)
class ImageConfig:
    """How to turn an RGB image into model pixels; mirrors the fields of a ``preprocessor_config.json``.

    Attributes:
        height: Output height in pixels.
        width: Output width in pixels.
        resample: PIL resample code used by ``resize`` mode (3 = bicubic, 2 = bilinear, ...).
        do_resize: Whether ``resize`` mode resizes at all (transformers semantics; ``letterbox`` always fits).
        do_rescale: Whether to multiply pixel values by ``rescale_factor``.
        rescale_factor: Factor applied when ``do_rescale``.
        do_normalize: Whether to apply ``(x - image_mean) / image_std`` per channel.
        image_mean: Per-channel mean (R, G, B).
        image_std: Per-channel standard deviation (R, G, B).
        do_convert_rgb: Kept for fidelity with the source config; `decode` always yields RGB.
        shortest_edge: CLIP-style resize: the shorter side goes to this many pixels, the aspect ratio is kept
            (``size={"shortest_edge": n}`` with ``default_to_square=False``); None = stretch to height x width.
        do_center_crop: Crop the centre ``height x width`` after resizing (CLIPImageProcessor's ``crop_size``),
            zero-padding an image smaller than that as transformers does.
    """

    height: int
    width: int
    resample: int = 3
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple = (0.5, 0.5, 0.5)
    image_std: tuple = (0.5, 0.5, 0.5)
    do_convert_rgb: bool = True
    shortest_edge: int | None = None
    do_center_crop: bool = False

    def __post_init__(self) -> None:
        check_image_config(self, ("height", "width"))

    @classmethod
    def from_hf(cls, d: dict) -> ImageConfig:
        """Builds a config from a transformers ``preprocessor_config.json`` dict.

        ``size`` may be ``{"height", "width"}``, ``{"shortest_edge": n}`` or a bare int; the latter two are read as a
        square ``n x n`` target (SigLIP checkpoints use height/width). A missing ``size`` falls back to SigLIP's 224.
        A scalar ``image_mean``/``image_std`` is broadcast to three channels. Unknown keys are ignored.

        Args:
            d: The parsed JSON object.

        Returns:
            The equivalent `ImageConfig`.

        Raises:
            LoadError: If ``size`` has an unsupported form.
        """
        height, width = _hf_size(d.get("size"))
        kwargs = {}
        # CLIPImageProcessor (and the older CLIPFeatureExtractor) crops by default; its bare-int `size` is the
        # shortest edge (get_size_dict(size, default_to_square=False)), its `crop_size` the output.
        clip_like = str(d.get("image_processor_type") or d.get("feature_extractor_type") or "").startswith("CLIP")
        if d.get("do_center_crop", clip_like):
            size, crop = d.get("size", 224), d.get("crop_size", 224)
            shortest = size if isinstance(size, int) else (size or {}).get("shortest_edge")
            if shortest is not None:
                kwargs["shortest_edge"] = int(shortest)
            height, width = _hf_size(crop)
            kwargs["do_center_crop"] = True
        for field in dataclasses.fields(cls):
            value = d.get(field.name)
            if field.name in ("height", "width", "shortest_edge", "do_center_crop") or value is None:
                continue
            if field.name in ("image_mean", "image_std") and isinstance(value, (int, float)):
                value = (value,) * 3
            kwargs[field.name] = value
        try:
            return cls(height=height, width=width, **kwargs)
        except ValueError as exc:
            raise LoadError(f"preprocessor config: {exc}") from None

    def to_dict(self) -> dict:
        """Returns a JSON-able dict that `from_dict` turns back into an equal config."""
        d = dataclasses.asdict(self)
        d["image_mean"] = list(self.image_mean)
        d["image_std"] = list(self.image_std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ImageConfig:
        """Inverse of `to_dict`.

        Raises:
            ValueError: On keys that are not `ImageConfig` fields (most likely a typo) or invalid values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"ImageConfig.from_dict: unknown keys {unknown}")
        return cls(**d)


def _three_floats(name: str, value) -> tuple:
    try:
        out = tuple(float(v) for v in value)
    except TypeError:
        raise ValueError(f"ImageConfig.{name} must be three numbers, got {value!r}") from None
    if len(out) != 3:
        raise ValueError(f"ImageConfig.{name} must be three numbers, got {value!r}")
    return out


def _hf_size(size) -> tuple[int, int]:
    if size is None:
        return _SIGLIP_DEFAULT_SIZE, _SIGLIP_DEFAULT_SIZE
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    if isinstance(size, dict):
        if size.get("height") is not None and size.get("width") is not None:
            return int(size["height"]), int(size["width"])
        if size.get("shortest_edge") is not None:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    raise LoadError(f"preprocessor config: size {size!r} needs 'height' and 'width' or 'shortest_edge'")


# --------------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------------


def source_name(src) -> str:
    """Names an input for error messages: the path, ``<bytes len=N>``, ``<PIL image>`` or ``<array shape=...>``."""
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        return os.fsdecode(path)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<bytes len={len(src)}>"
    if isinstance(src, PIL.Image.Image):
        return "<PIL image>"
    if isinstance(src, np.ndarray):
        return f"<array shape={src.shape} dtype={src.dtype}>"
    return f"<{type(src).__name__}>"


def _error(source: str, reason) -> ImageError:
    # PIL and OS messages sometimes span lines; siglite errors are one line.
    return ImageError(source, " ".join(str(reason).split()))


def decode(
    src: ImageInput, *, max_pixels: int | None = MAX_PIXELS_DEFAULT, background: tuple = _WHITE
) -> np.ndarray:
    """Decodes any supported input into a contiguous HWC uint8 RGB array.

    Files and bytes are opened with PIL and fully decoded here (so truncation surfaces here, not later); the first
    frame of animations is used; EXIF orientation is applied (also for PIL images, so a file gives the same pixels
    whichever way it is passed). Transparency is composited onto ``background`` exactly as transformers'
    ``convert_to_rgb`` does onto white. 16-bit grayscale is scaled to 8 bits by rounding ``v / 257`` (PIL itself would
    clip at 255). Float ('F') images whose values all lie in 0..1 are scaled by 255 (rounded); other float images are
    taken on a 0-255 scale, NaN as 0, clipped and truncated like PIL's own conversion. Arrays must be uint8:
    ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA; use
    `from_bgr` first for OpenCV arrays.

    Args:
        src: A path (str or os.PathLike), encoded image bytes, a PIL image or a uint8 array.
        max_pixels: Refuse images with more than this many pixels, checked from the header before decoding.
            ``None`` disables the check; PIL's own process-wide ``PIL.Image.MAX_IMAGE_PIXELS`` guard still applies.
        background: RGB colour that transparent pixels are composited onto.

    Returns:
        A ``(H, W, 3)`` uint8 C-contiguous array.

    Raises:
        ImageError: If the input cannot be decoded; the message starts with the input's name.
        ValueError: If ``max_pixels`` or ``background`` is malformed.
    """
    background = _check_background(background)
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
    source = source_name(src)
    if isinstance(src, np.ndarray):
        _check_array(src, source)
        _check_pixels(source, src.shape[1], src.shape[0], max_pixels)
        return _array_to_rgb(src, background)
    if isinstance(src, PIL.Image.Image):
        return _pil_to_array(src, source, max_pixels, background)
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise _error(source, "empty input (no bytes)")
        return _open_and_decode(io.BytesIO(bytes(src)), source, max_pixels, background)
    if isinstance(src, (str, os.PathLike)):
        _check_file(source)
        return _open_and_decode(source, source, max_pixels, background)
    raise _error(source, "unsupported input type; expected a path, bytes, a PIL image or a numpy array")


def from_bgr(array: np.ndarray) -> np.ndarray:
    """Converts an OpenCV-style BGR (or BGRA) uint8 array to RGB (RGBA), the layout `decode` expects.

    Args:
        array: ``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA uint8; ``(H, W)`` grayscale is returned as a copy.

    Returns:
        A C-contiguous copy with the colour channels in RGB order.

    Raises:
        ImageError: If the array is not a uint8 image of a supported shape.
    """
    source = source_name(array)
    _check_array(array, source)
    if array.ndim == 2 or array.shape[2] == 1:
        return np.ascontiguousarray(array).copy()
    order = [2, 1, 0] if array.shape[2] == 3 else [2, 1, 0, 3]
    return np.ascontiguousarray(array[..., order])


def _check_background(background) -> tuple:
    try:
        bg = tuple(int(c) for c in background)
    except (TypeError, ValueError):
        raise ValueError(f"background must be an (R, G, B) tuple of 0-255 ints, got {background!r}") from None
    if len(bg) != 3 or not all(0 <= c <= 255 for c in bg):
        raise ValueError(f"background must be an (R, G, B) tuple of 0-255 ints, got {background!r}")
    return bg


def _check_file(path: str) -> None:
    # os.stat gives clearer reasons than PIL's "cannot identify image file" for these common mistakes.
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _error(path, "no such file") from None
    except OSError as exc:
        raise _error(path, f"cannot access file ({exc.strerror or exc})") from None
    if os.path.isdir(path):
        raise _error(path, "is a directory, not an image file")
    if st.st_size == 0:
        raise _error(path, "empty file (0 bytes)")


def _check_pixels(source: str, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise _error(source, f"image is {width}x{height} = {width * height} pixels, which exceeds the pixel limit "
                             f"of {max_pixels} (raise max_pixels, or pass None to disable)")


def _bomb_error(source: str, exc: Exception) -> ImageError:
    return _error(source, f"image exceeds the pixel limit of PIL.Image.MAX_IMAGE_PIXELS ({exc})")


def _open_and_decode(fp, source: str, max_pixels: int | None, background: tuple) -> np.ndarray:
    try:
        # Our max_pixels is the limit that counts, so PIL's softer warning (at half its hard limit) is noise here;
        # its hard limit still raises DecompressionBombError, reported below. (catch_warnings is process-global
        # before Python 3.14; racing threads can at worst leave this one PIL warning silenced.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            img = PIL.Image.open(fp)
    except PIL.Image.DecompressionBombError as exc:
        raise _bomb_error(source, exc) from None
    except PIL.UnidentifiedImageError:
        raise _error(source, "not a recognised image format (PIL cannot identify it)") from None
    except Exception as exc:  # PIL's format plugins raise many unrelated types on malformed headers
        raise _error(source, f"cannot open image ({type(exc).__name__}: {exc})") from None
    with img:
        return _pil_to_array(img, source, max_pixels, background)


def _pil_to_array(img: PIL.Image.Image, source: str, max_pixels: int | None, background: tuple) -> np.ndarray:
    # The size comes from the header, so this runs before any pixel data is decoded.
    _check_pixels(source, img.width, img.height, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            img.load()
    except PIL.Image.DecompressionBombError as exc:  # e.g. a GIF frame larger than the header promised
        raise _bomb_error(source, exc) from None
    except Exception as exc:  # truncated/corrupt data surfaces as OSError, SyntaxError, ValueError, zlib.error, ...
        raise _error(source, f"cannot decode image data ({type(exc).__name__}: {exc})") from None
    img = _exif_transpose(img)
    try:
        rgb = np.array(_pil_to_rgb(img, background), dtype=np.uint8)
    except (ValueError, OSError) as exc:
        raise _error(source, f"cannot convert {img.mode} image to RGB ({exc})") from None
    return np.ascontiguousarray(rgb)


def _exif_transpose(img: PIL.Image.Image) -> PIL.Image.Image:
    try:
        return PIL.ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF must not make a decodable image unusable; keep it as stored
        return img


def _pil_to_rgb(img: PIL.Image.Image, background: tuple) -> PIL.Image.Image:
    """Converts any PIL mode to RGB; port of transformers ``image_transforms.convert_to_rgb`` (PIL branch).

    Beyond transformers: 16/32-bit integer and float grayscale are scaled instead of clipped (see `decode`), and
    premultiplied 'La' is unpremultiplied first (PIL cannot convert it to RGBA directly).
    """
    if img.mode in _WIDE_INT_MODES:
        return _gray_to_rgb(_wide_int_to_uint8(np.asarray(img)))
    if img.mode == "F":
        return _gray_to_rgb(_float_to_uint8(np.asarray(img)))
    if img.mode == "La":
        img = img.convert("LA")
    if "A" in img.getbands() or "a" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        base = PIL.Image.new("RGBA", rgba.size, (*background, 255))
        return PIL.Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")


def _wide_int_to_uint8(values: np.ndarray) -> np.ndarray:
    # 16-bit data: round(v / 257) maps 0..65535 onto 0..255 exactly inverting the usual 8->16 bit expansion (v * 257).
    # 'I' (int32) is read as 16-bit too, the range PNG/TIFF/PGM grayscale use; out-of-range values are clipped.
    v = np.clip(values.astype(np.int64), 0, 65535)
    return ((v + 128) // 257).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    # Float images come on two scales: 0..1 (scikit-image, tifffile, most float TIFF writers) and 0..255. An image
    # whose finite values all lie in 0..1 is taken as 0..1 and scaled by 255 with rounding (truncating it as PIL does
    # would decode it as black); otherwise as PIL's F -> L conversion: clip to 0..255, truncate. NaN is 0.
    v = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    finite = values[np.isfinite(values)]
    if finite.size and float(finite.min()) >= 0.0 and float(finite.max()) <= 1.0:
        return np.rint(np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.clip(v, 0.0, 255.0).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.ascontiguousarray(gray), mode="L").convert("RGB")


def _check_array(array: np.ndarray, source: str) -> None:
    if array.dtype != np.uint8:
        raise _error(source, f"expected a uint8 image array, got dtype {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        raise _error(source, f"expected shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise _error(source, "empty image (zero height or width)")


def _array_to_rgb(array: np.ndarray, background: tuple) -> np.ndarray:
    """Port of transformers ``image_transforms.convert_to_rgb`` (numpy branch), with a configurable background."""
    if array.ndim == 2:
        array = array[..., None]
    channels = array.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=-1))
    if channels == 3:
        return np.array(array, order="C", copy=True)
    # Same float64 expression and rounding as transformers, so RGBA arrays match it exactly.
    alpha = array[..., 3:4] / 255
    composite = alpha * array[..., :3] + (1 - alpha) * np.asarray(background, dtype=np.float64)
    return np.ascontiguousarray(np.round(composite).astype(np.uint8))


# --------------------------------------------------------------------------------------------------------------------
# Pixel preprocessing
# --------------------------------------------------------------------------------------------------------------------


def _check_rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        source = source_name(image)
        raise _error(source, "expected an (H, W, 3) uint8 RGB array; pass the input through decode() first")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise _error(source_name(image), "empty image (zero height or width)")
    return np.ascontiguousarray(image)


def _rescale_normalize(hwc: np.ndarray, cfg: ImageConfig) -> np.ndarray:
    """Port of transformers ``image_transforms.rescale`` then ``normalize``: same dtypes and operation order."""
    x = hwc
    if cfg.do_rescale:
        # transformers upcasts to float64 before scaling and downcasts to float32 afterwards.
        x = (x.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    if cfg.do_normalize:
        x = x.astype(np.float32, copy=False)
        x = (x - np.array(cfg.image_mean, dtype=np.float32)) / np.array(cfg.image_std, dtype=np.float32)
    return x.astype(np.float32, copy=False)


def _to_chw(hwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(hwc.transpose(2, 0, 1))


def resize(image: np.ndarray, cfg: ImageConfig) -> np.ndarray:
    """Stretches to ``cfg.height x cfg.width`` with PIL, then rescales and normalizes, exactly like transformers.

    Port of ``SiglipImageProcessorPil`` (``PilBackend._preprocess``: ``resize`` with ``PIL.Image.resize``,
    ``rescale``, ``normalize``) from transformers 5.23. Feeding it ``decode(x)`` equals feeding ``x`` to the
    transformers processor (inputs without EXIF rotation, 8-bit modes).

    Args:
        image: ``(H, W, 3)`` uint8 RGB, e.g. from `decode`.
        cfg: Target size, resample filter and normalization.

    Returns:
        ``(3, cfg.height, cfg.width)`` float32 (the input's own size when ``cfg.do_resize`` is False).
    """
    rgb = _check_rgb(image)
    if cfg.do_resize:
        h, w = (cfg.height, cfg.width) if cfg.shortest_edge is None else \
            shortest_edge_size(rgb.shape[0], rgb.shape[1], cfg.shortest_edge)
        resized = PIL.Image.fromarray(rgb, mode="RGB").resize((w, h), resample=cfg.resample)
        rgb = np.asarray(resized)
    if cfg.do_center_crop:
        rgb = center_crop(rgb, cfg.height, cfg.width)
    return _to_chw(_rescale_normalize(rgb, cfg))


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(new_h, new_w) with the shorter side at `size`, the longer scaled and truncated: transformers
    ``image_transforms.get_resize_output_image_size(default_to_square=False)`` (torchvision's Resize rule)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The centre ``height x width`` of an ``(H, W, C)`` image, zero-padded (centred, extra pixel at the bottom /
    right) where the image is smaller: transformers ``image_transforms.center_crop``."""
    h, w = image.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0 and top + height <= h and left + width <= w:
        return np.ascontiguousarray(image[top:top + height, left:left + width])
    new_h, new_w = max(height, h), max(width, w)
    canvas = np.zeros((new_h, new_w) + image.shape[2:], dtype=image.dtype)
    top_pad, left_pad = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    canvas[top_pad:top_pad + h, left_pad:left_pad + w] = image
    top, left = top + top_pad, left + left_pad
    return np.ascontiguousarray(canvas[max(0, top):min(new_h, top + height), max(0, left):min(new_w, left + width)])


def letterbox_geometry(height: int, width: int, cfg: ImageConfig) -> tuple[int, int, int, int]:
    """Returns ``(new_h, new_w, top, left)``: the resized image size and its offset on the target canvas.

    Same float expressions as the seed recipe (``scale = target / max(h, w)``, ``int(h * scale)``): for a square target
    ``min(T / h, T / w)`` is exactly ``T / max(h, w)``, so square results are bit-identical to it.
    """
    scale = min(cfg.height / height, cfg.width / width)
    new_h = min(cfg.height, max(1, int(height * scale)))
    new_w = min(cfg.width, max(1, int(width * scale)))
    return new_h, new_w, (cfg.height - new_h) // 2, (cfg.width - new_w) // 2


def _is_siglip_default_norm(cfg: ImageConfig) -> bool:
    return (cfg.do_rescale and cfg.do_normalize and cfg.rescale_factor == 1 / 255
            and cfg.image_mean == (0.5, 0.5, 0.5) and cfg.image_std == (0.5, 0.5, 0.5))


def letterbox(image: np.ndarray, cfg: ImageConfig) -> np.ndarray:
    """Fits the image inside ``cfg.height x cfg.width`` keeping its aspect ratio, padding with grey 127.

    Port of the seed recipe ``shared/seeds/000_b64b46afb15a8577.txt`` (``cv2.INTER_AREA`` resize, centred
    ``cv2.copyMakeBorder`` with 127, ``x / 127.5 - 1``), taking RGB instead of BGR: INTER_AREA treats channels
    independently, so resizing RGB equals resizing BGR and then swapping. With the SigLIP default normalization
    (rescale 1/255, mean = std = 0.5) the recipe's own expression is used, so results are bit-identical to it (the
    transformers-style expression happens to agree on all 256 levels, but the recipe is the contract); any other
    normalization follows `resize`'s transformers-style rescale and normalize. ``cfg.resample`` and
    ``cfg.do_resize`` do not apply here.

    Args:
        image: ``(H, W, 3)`` uint8 RGB, e.g. from `decode`.
        cfg: Target size and normalization.

    Returns:
        ``(3, cfg.height, cfg.width)`` float32.
    """
    rgb = _check_rgb(image)
    new_h, new_w, top, left = letterbox_geometry(rgb.shape[0], rgb.shape[1], cfg)
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA)
    bottom, right = cfg.height - new_h - top, cfg.width - new_w - left
    fill = [_LETTERBOX_FILL] * 3
    padded = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=fill)
    if _is_siglip_default_norm(cfg):
        return _to_chw(padded).astype(np.float32) / 127.5 - 1.0
    return _to_chw(_rescale_normalize(padded, cfg))


PREPROCESS: dict[str, Callable[[np.ndarray, ImageConfig], np.ndarray]] = {"resize": resize, "letterbox": letterbox}
_ON_ERROR = ("raise", "skip")


def preprocess_batch(
    images: Sequence[ImageInput],
    cfg: ImageConfig,
    mode: str = "resize",
    *,
    on_error: str = "raise",
    max_pixels: int | None = MAX_PIXELS_DEFAULT,
    background: tuple = _WHITE,
) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Decodes and preprocesses a batch of images into one array.

    Args:
        images: Inputs accepted by `decode`.
        cfg: Target size and normalization.
        mode: A key of `PREPROCESS` ("resize" or "letterbox").
        on_error: "raise" raises the first `ImageError`; "skip" records failures and keeps the rest.
        max_pixels: Passed to `decode`.
        background: Passed to `decode`.

    Returns:
        ``(pixels, ok_indices, failures)``: pixels ``(N_ok, 3, cfg.height, cfg.width)`` float32 in input order,
        the indices of the images in ``pixels``, and ``(index, one-line message)`` for each skipped image.

    Raises:
        ValueError: On an unknown ``mode`` or ``on_error``.
        ImageError: With ``on_error="raise"``, for the first bad input.
    """
    fn = PREPROCESS.get(mode)
    if fn is None:
        raise ValueError(f"unknown preprocessing mode {mode!r}; valid modes: {', '.join(sorted(PREPROCESS))}")
    if on_error not in _ON_ERROR:
        raise ValueError(f"unknown on_error {on_error!r}; valid values: {', '.join(_ON_ERROR)}")
    pixels, ok, failures = [], [], []
    for index, src in enumerate(images):
        try:
            chw = fn(decode(src, max_pixels=max_pixels, background=background), cfg)
            _check_batch_shape(chw, cfg, src)
        except ImageError as exc:
            if on_error == "raise":
                raise
            failures.append((index, str(exc)))
            continue
        pixels.append(chw)
        ok.append(index)
    batch = np.stack(pixels) if pixels else np.empty((0, 3, cfg.height, cfg.width), dtype=np.float32)
    return batch, ok, failures


def _check_batch_shape(chw: np.ndarray, cfg: ImageConfig, src) -> None:
    # Only reachable with do_resize=False: such an image cannot join a fixed-size batch.
    if chw.shape != (3, cfg.height, cfg.width):
        raise _error(source_name(src), f"image is {chw.shape[2]}x{chw.shape[1]} but do_resize=False needs exactly "
                                       f"{cfg.width}x{cfg.height}")
