"""`search`: exact top-k over the output of `siglite embed`, memory-mapped, for checking a job's output by eye.

Scores are cosine similarities (the normalised dot product). When the query and the stored embeddings are of different
modalities (a text against images, or an image against texts) each hit also gets SigLIP's own probability,
``sigmoid(cos * exp(t) + b)`` with the checkpoint's learned t and b, the same number `Model.classify` reports.
"""

from __future__ import annotations

import heapq
import os
from typing import TYPE_CHECKING

import numpy as np

from ..errors import SigliteError
from .embed.runner import model_fingerprint
from .embed.store import EmbeddingStore, open_store
from ..data.sources import require_pyarrow

if TYPE_CHECKING:
    from ..pipeline import Model

CHUNK_ROWS = 65_536  # rows scored at once: (65536, D) float32 stays a few hundred MB even at D = 1152


def top_k(store: EmbeddingStore, query: np.ndarray, k: int = 10) -> list[tuple[float, int, int]]:
    """Exact top-k cosine similarity of one (D,) query against every stored row.

    Returns:
        ``(score, part index, row in part)`` best first; ties go to the earlier row.
    """
    q = np.asarray(query, np.float32).reshape(-1)
    dim = store.manifest["dims"]["emb"][-1]
    if q.shape[0] != dim:
        raise SigliteError(f"query has {q.shape[0]} dims but {store.path} holds {dim}-dim embeddings")
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    best: list[tuple[float, int, int]] = []  # min-heap of (score, -part, -row): the worst kept hit on top
    for p, (emb_path, _) in enumerate(store.parts):
        emb = np.load(emb_path, mmap_mode="r")
        for start in range(0, emb.shape[0], CHUNK_ROWS):
            x = np.asarray(emb[start:start + CHUNK_ROWS], dtype=np.float32)
            scores = (x @ q) / np.maximum(np.linalg.norm(x, axis=1), 1e-12)  # (n,)
            take = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
            for i in take:
                entry = (float(scores[i]), -p, -(start + int(i)))
                if len(best) < k:
                    heapq.heappush(best, entry)
                elif entry > best[0]:
                    heapq.heapreplace(best, entry)
    return [(s, -p, -r) for s, p, r in sorted(best, reverse=True)]


def search(model: Model, out: str | os.PathLike, *, text: str | None = None, image=None, top: int = 10,
           partial: bool = False) -> list[dict]:
    """Embeds one query (a text, or an image path) with `model` and returns the `top` nearest stored rows.

    Returns:
        Records best first: rank, score (cosine), prob (SigLIP sigmoid, for a query of the other modality; none for
        CLIP, whose softmax scores compete over a label set), id, key,
        and source or caption.

    Args:
        partial: Search an unfinished output's finished shards (refused by default: see `embed.store.open_store`).

    Raises:
        SigliteError: Without exactly one query, when `model` is not the model that made the embeddings, or on a bad
            folder.
    """
    if (text is None) == (image is None):
        raise SigliteError("give a text query or --image, not both and not neither")
    if top < 1:
        raise SigliteError(f"--top must be a positive integer, got {top}")
    store = open_store(out, partial=partial)
    made_with = store.manifest.get("model", {}).get("fingerprint")
    if made_with and made_with != model_fingerprint(model):
        raise SigliteError(f"{store.path} was embedded with another model ({store.manifest['model'].get('name')}); "
                           f"search it with that model")
    if text is not None:
        query, modality = model.text_features([text])[0], "text"
    else:
        mode = (store.manifest.get("preprocess") or {}).get("mode", "resize")
        query, modality = model.image_features([image], preprocess=mode)[0], "image"
    hits = top_k(store, query, top)
    scale, bias = store.manifest.get("logit_scale"), store.manifest.get("logit_bias")
    # A per-hit probability exists for SigLIP's sigmoid only: CLIP's softmax is over a chosen set of labels, not a hit.
    sigmoid = store.manifest.get("logits", "sigmoid") == "sigmoid"
    cross = modality != store.modality and scale is not None and bias is not None and sigmoid
    pq = require_pyarrow()
    tables: dict[int, dict] = {}
    records = []
    for rank, (score, p, row) in enumerate(hits, 1):
        if p not in tables:
            tables[p] = pq.read_table(store.parts[p][1]).to_pydict()
        meta = {name: values[row] for name, values in tables[p].items()}
        record = {"rank": rank, "score": score}
        if cross:
            record["prob"] = float(1.0 / (1.0 + np.exp(-(score * np.exp(scale) + bias))))
        records.append({**record, **meta})
    return records
