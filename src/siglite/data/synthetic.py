"""A procedural image-caption dataset: coloured shapes on textured backgrounds, deterministic from a seed.

Each image shows one shape (circle, cross, square, star, triangle) in one colour (blue, green, purple, red, yellow)
at a size, position and rotation, on a light or dark background with a texture (plain, striped, checkered, dotted,
noisy). The class is colour x shape (25 classes, named like "red circle"); the main caption describes every
attribute ("a large red circle on a dark striped background"), the others are shorter phrasings ("a red circle at the
top left", "a photo of a red circle", ...), so a model trained on the captions can be evaluated zero-shot on the
class names. Used to train the small SigLIP test fixture
(tests/fixtures/trained-tiny) and to give the evaluators a labelled set with a known answer.

Everything is drawn with PIL at 4x the image size and box-filtered down (anti-aliased edges), with every random choice
from one `numpy.random.default_rng(seed)` stream, so the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

# Alphabetical, so that CLASSNAMES, their folder names and `sorted(os.listdir(...))` agree on the class order.
COLOURS = {"blue": (40, 90, 225), "green": (35, 165, 60), "purple": (150, 55, 195), "red": (215, 35, 35),
           "yellow": (235, 205, 30)}
SHAPES = ("circle", "cross", "square", "star", "triangle")
CLASSNAMES = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]

SIZES = {"small": (0.2, 0.26), "large": (0.32, 0.4)}  # shape radius as a fraction of the image side
TONES = {"light": (195, 245), "dark": (25, 80)}  # background grey level range
TEXTURES = ("plain", "striped", "checkered", "dotted", "noisy")
# 3x3 grid cell of the shape's centre -> phrase
POSITIONS = {(0, 0): "at the top left", (0, 1): "at the top", (0, 2): "at the top right",
             (1, 0): "on the left", (1, 1): "in the centre", (1, 2): "on the right",
             (2, 0): "at the bottom left", (2, 1): "at the bottom", (2, 2): "at the bottom right"}

# The first template is the image's main caption; the others are alternative phrasings written to the JSONL and
# sampled during training. Every one names both the colour and the shape, so "caption true of an image" and "same
# class" coincide and `train(positives="label")` never counts a true caption as a negative. Most name just the class,
# in prompt-like forms (web alt-text has many of those): with mostly attribute-rich captions a small contrastive
# model settles on the easy attributes (colour, background tone, texture, size) and its text tower learns to ignore
# the shape word (measured with attribute-rich templates: shape stayed at chance after 2000 steps).
CAPTION_TEMPLATES = (
    "a {size} {colour} {shape} on a {tone} {texture} background",
    "{colour} {shape}",
    "a {colour} {shape}",
    "a photo of a {colour} {shape}",
    "this is a photo of {colour} {shape}",
    "a picture of a {colour} {shape}",
    "a {colour} {shape} {position}",
)

DEFAULT_IMAGE_SIZE = 32
SUPERSAMPLE = 4
COLOUR_JITTER = 25  # +- per channel, so colour is a range, not one exact value
NOISE_STD = 6.0  # grey levels of pixel noise on every image


class Sample(NamedTuple):
    image: Image.Image
    caption: str
    label: int


class Attributes(NamedTuple):
    """What one generated image shows (the caption templates' fields)."""

    label: int
    colour: str
    shape: str
    size: str
    tone: str
    texture: str
    position: str

    @property
    def classname(self) -> str:
        return CLASSNAMES[self.label]

    def captions(self) -> list[str]:
        """Every caption template filled in; the first is the main caption."""
        return [t.format(**self._asdict()) for t in CAPTION_TEMPLATES]


def generate(n: int, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE) -> list[Sample]:
    """`n` images with their main caption and class index; classes cycle (sample i has class i % 25), so any
    multiple of 25 is balanced. Same (n, seed, image_size) -> identical pixels."""
    return [Sample(img, attrs.captions()[0], attrs.label)
            for img, attrs in generate_with_attributes(n, seed, image_size)]


def generate_with_attributes(n: int, seed: int = 0,
                             image_size: int = DEFAULT_IMAGE_SIZE) -> list[tuple[Image.Image, Attributes]]:
    """As `generate`, returning each image's full `Attributes` (for all of its captions)."""
    if n < 0 or image_size < 8:
        raise ValueError(f"need n >= 0 and image_size >= 8, got n={n}, image_size={image_size}")
    rng = np.random.default_rng(seed)
    return [_draw(i % len(CLASSNAMES), rng, image_size) for i in range(n)]


def _draw(label: int, rng: np.random.Generator, image_size: int) -> tuple[Image.Image, Attributes]:
    colour = list(COLOURS)[label // len(SHAPES)]
    shape = SHAPES[label % len(SHAPES)]
    size = str(rng.choice(list(SIZES)))
    tone = str(rng.choice(list(TONES)))
    texture = str(rng.choice(TEXTURES))

    S = image_size * SUPERSAMPLE
    radius = rng.uniform(*SIZES[size]) * S
    # centre anywhere the whole shape stays inside the image
    cx, cy = (rng.uniform(radius, S - radius) for _ in range(2))
    rotation = rng.uniform(-20, 20)
    grey = int(rng.integers(*TONES[tone]))
    fill = tuple(int(np.clip(c + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1), 0, 255)) for c in COLOURS[colour])

    canvas = Image.new("RGB", (S, S), (grey,) * 3)
    _texture(ImageDraw.Draw(canvas), texture, grey, S, rng)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, radius, rotation), fill=fill)
    img = canvas.resize((image_size, image_size), Image.Resampling.BOX)
    std = NOISE_STD * (3 if texture == "noisy" else 1)  # grey noise: the same offset on all three channels
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, std, (image_size, image_size, 1))
    img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    cell = (min(int(cy / S * 3), 2), min(int(cx / S * 3), 2))
    return img, Attributes(label, colour, shape, size, tone, texture, POSITIONS[cell])


def _texture(draw: ImageDraw.ImageDraw, texture: str, grey: int, S: int, rng: np.random.Generator) -> None:
    """Paint a grey pattern over the plain background; the second grey stays on the same side (light/dark)."""
    other = (grey - 40 if grey > 128 else grey + 40,) * 3
    period = int(rng.integers(S // 8, S // 4))
    if texture == "striped":
        width = period // 2
        if rng.random() < 0.5:  # horizontal or vertical stripes
            for y in range(0, S, period):
                draw.rectangle([0, y, S, y + width], fill=other)
        else:
            for x in range(0, S, period):
                draw.rectangle([x, 0, x + width, S], fill=other)
    elif texture == "checkered":
        for y in range(0, S, period):
            for x in range(0, S, period):
                if (x // period + y // period) % 2:
                    draw.rectangle([x, y, x + period - 1, y + period - 1], fill=other)
    elif texture == "dotted":
        r = period // 6
        for y in range(period // 2, S, period):
            for x in range(period // 2, S, period):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=other)
    # "plain" and "noisy" have no pattern; noise is added after downsampling


def _polygon(shape: str, cx: float, cy: float, r: float, rotation: float) -> list[tuple[float, float]]:
    """Vertices of a shape of circumradius ~r centred at (cx, cy), rotated by `rotation` degrees."""
    if shape == "square":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
    elif shape == "triangle":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif shape == "star":
        pts = [((r if k % 2 == 0 else 0.45 * r) * math.cos(a), (r if k % 2 == 0 else 0.45 * r) * math.sin(a))
               for k, a in ((k, -math.pi / 2 + k * math.pi / 5) for k in range(10))]
    elif shape == "cross":
        w = 0.33 * r  # half-width of each arm
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w),
               (-w, -w)]
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def folder_name(classname: str) -> str:
    """Class folder name: "red circle" -> "red_circle" (sorts like CLASSNAMES)."""
    return classname.replace(" ", "_")


def write_folder(out: str | Path, n_per_class: int, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE, *,
                 jsonl: bool = True, overwrite: bool = False, progress=None) -> dict:
    """Write `n_per_class` images per class as an ImageNet-style folder.

    Layout: `out/<class>/<index>.png` (class folders named by `folder_name`, sorted in CLASSNAMES order),
    `out/classnames.txt` (one class name per line, in folder order) and, with `jsonl`, `out/captions.jsonl`: one
    line per image, `{"image": "<class>/<index>.png", "captions": [...], "label": "red circle"}` with the image
    path relative to the JSONL's folder and the main caption first.

    The dataset is built in a temporary sibling folder and swapped in when complete, so an interrupted run leaves
    nothing half-written and a replaced dataset keeps no stale images or captions of the old one.

    Args:
        out: The dataset folder.
        n_per_class: Images per class (>= 1).
        seed: Random seed; the same seed writes the same bytes.
        image_size: Image side in pixels.
        jsonl: Also write captions.jsonl.
        overwrite: Replace an existing dataset (one with classnames.txt); refused otherwise.
        progress: Called with 1 per image written (`siglite.progress`).

    Returns a record: folder, images, classes, jsonl (path or None).

    Raises:
        SigliteError: `out` is a file, its parent is missing, or it is a non-empty folder and `overwrite` is false
            or it is not a dataset this function wrote.
    """
    from ..errors import SigliteError
    from ..fileio import check_output_dir, staged_dir

    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1:
        raise SigliteError(f"per-class must be a positive integer, got {n_per_class!r}")
    out = check_output_dir(out, overwrite=overwrite, markers=("classnames.txt",), what="dataset")
    rows = []
    with staged_dir(out) as tmp:
        for name in CLASSNAMES:
            (tmp / folder_name(name)).mkdir()
        (tmp / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
        for i, (img, attrs) in enumerate(generate_with_attributes(n_per_class * len(CLASSNAMES), seed, image_size)):
            rel = f"{folder_name(attrs.classname)}/{i // len(CLASSNAMES):05d}.png"
            img.save(tmp / rel, optimize=False)
            rows.append({"image": rel, "captions": attrs.captions(), "label": attrs.classname})
            if progress is not None:
                progress(1)
        if jsonl:
            (tmp / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = out / "captions.jsonl" if jsonl else None
    return {"folder": str(out), "images": len(rows), "classes": len(CLASSNAMES), "jsonl": str(path) if path else None}


# -- multi-label scenes -----------------------------------------------------------------------------------------------

SCENE_RADIUS = (0.17, 0.24)  # shape radius as a fraction of the side: three fit without covering each other much


class Scene(NamedTuple):
    """One generated multi-label scene."""

    image: Image.Image
    labels: list[str]  # the shapes present (SHAPES order), 1..max_shapes distinct ones
    masks: dict[str, np.ndarray]  # shape -> (H, W) float coverage in [0, 1] of that shape's visible pixels
    colours: dict[str, str]  # shape -> its colour name


def generate_scenes(n: int, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE, *, min_shapes: int = 1,
                    max_shapes: int = 3, radius: tuple[float, float] = SCENE_RADIUS) -> list[Scene]:
    """`n` scenes of `min_shapes`..`max_shapes` distinct procedural shapes (each in a random colour) on the same
    textured backgrounds as `generate`: a multi-label set (labels = which shapes are present) that a classifier has
    to learn, since shape is what a colour-and-texture shortcut cannot tell. Centres are drawn so shapes overlap
    little (best of a few tries). Same arguments -> identical pixels."""
    if not 1 <= min_shapes <= max_shapes <= len(SHAPES):
        raise ValueError(f"need 1 <= min_shapes <= max_shapes <= {len(SHAPES)}, got {min_shapes}, {max_shapes}")
    if n < 0 or image_size < 8:
        raise ValueError(f"need n >= 0 and image_size >= 8, got n={n}, image_size={image_size}")
    rng = np.random.default_rng(seed)
    return [_draw_scene(rng, image_size, int(rng.integers(min_shapes, max_shapes + 1)), radius) for _ in range(n)]


def _draw_scene(rng: np.random.Generator, image_size: int, k: int, radius: tuple[float, float]) -> Scene:
    S = image_size * SUPERSAMPLE
    tone = str(rng.choice(list(TONES)))
    texture = str(rng.choice(TEXTURES))
    grey = int(rng.integers(*TONES[tone]))
    canvas = Image.new("RGB", (S, S), (grey,) * 3)
    _texture(ImageDraw.Draw(canvas), texture, grey, S, rng)
    shapes = [SHAPES[i] for i in sorted(rng.choice(len(SHAPES), size=k, replace=False))]
    placed: list[tuple[float, float, float]] = []
    full_masks = {}
    for shape in shapes:
        r = rng.uniform(*radius) * S
        best = None
        for _ in range(20):  # keep the candidate centre farthest from the shapes already placed
            c = (rng.uniform(r, S - r), rng.uniform(r, S - r))
            gap = min((math.dist(c, p[:2]) - r - p[2] for p in placed), default=S)
            if best is None or gap > best[0]:
                best = (gap, c)
            if gap > 0:
                break
        cx, cy = best[1]
        placed.append((cx, cy, r))
        colour = str(rng.choice(list(COLOURS)))
        fill = tuple(int(np.clip(c + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1), 0, 255))
                     for c in COLOURS[colour])
        mask = Image.new("L", (S, S), 0)
        if shape == "circle":
            box = [cx - r, cy - r, cx + r, cy + r]
            ImageDraw.Draw(canvas).ellipse(box, fill=fill)
            ImageDraw.Draw(mask).ellipse(box, fill=255)
        else:
            pts = _polygon(shape, cx, cy, r, rng.uniform(-20, 20))
            ImageDraw.Draw(canvas).polygon(pts, fill=fill)
            ImageDraw.Draw(mask).polygon(pts, fill=255)
        for other, _ in full_masks.values():  # a later shape covers the earlier ones
            other.paste(0, mask=mask)
        full_masks[shape] = (mask, colour)
    img = canvas.resize((image_size, image_size), Image.Resampling.BOX)
    std = NOISE_STD * (3 if texture == "noisy" else 1)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, std, (image_size, image_size, 1))
    img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    masks = {s: np.asarray(m.resize((image_size, image_size), Image.Resampling.BOX), np.float32) / 255.0
             for s, (m, _) in full_masks.items()}
    return Scene(img, shapes, masks, {s: c for s, (_, c) in full_masks.items()})


def write_multilabel(out: str | Path, n: int, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE, *,
                     min_shapes: int = 1, max_shapes: int = 3) -> dict:
    """Write `n` scenes of `generate_scenes` as a multi-label set: `out/images/<index>.png` and `out/labels.csv`
    (header ``image,circle,cross,square,star,triangle``; one row per image with its path relative to `out` and a
    0/1 column per shape) — the layout `siglite finetune --data out/labels.csv --multi-label` reads (the seed's
    Kaggle multi-label CSV has the same shape, plus a text column that finetune ignores).

    Returns a record: folder, csv, images, labels, label_counts.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = [",".join(["image", *SHAPES])]
    counts = dict.fromkeys(SHAPES, 0)
    for i, scene in enumerate(generate_scenes(n, seed, image_size, min_shapes=min_shapes, max_shapes=max_shapes)):
        name = f"images/{i:05d}.png"
        scene.image.save(out / name, optimize=False)
        lines.append(",".join([name, *("1" if s in scene.labels else "0" for s in SHAPES)]))
        for s in scene.labels:
            counts[s] += 1
    (out / "labels.csv").write_text("\n".join(lines) + "\n")
    return {"folder": str(out), "csv": str(out / "labels.csv"), "images": n, "labels": len(SHAPES),
            "label_counts": counts}
