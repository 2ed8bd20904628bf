"""siglite.data: the folder readers of `embed`/calibration (sources) and of evaluation (datasets) agree on what an
image file is (one extension list)."""

from __future__ import annotations

from siglite.data.datasets import list_images
from siglite.data.sources import IMAGE_EXTS, open_source


def test_one_image_extension_list(tmp_path):
    names = ["a.JPG", "b.jfif", "c.tga", "d.png", "notes.txt", "e.heic", "sub/f.webp"]
    for n in names:
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_bytes(b"x")
    by_eval = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    by_embed = [item.key for item in open_source(str(tmp_path)).items()]
    assert by_eval == by_embed == sorted(n for n in names if n != "notes.txt")
    assert {"jfif", "jpe", "tif", "tga"} <= set(IMAGE_EXTS)  # the union of the two lists that disagreed
