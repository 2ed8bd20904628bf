"""Request and response bodies of the HTTP API (pydantic).

`/v1/embeddings` follows OpenAI's embeddings API (https://platform.openai.com/docs/api-reference/embeddings) so the
official client works unchanged, plus the `modality` and `normalize` fields infinity's clients send. Unknown fields
are refused, so a typo ("modalty") is a 400 naming it instead of a silently ignored option.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingRequest(_Strict):
    model: str
    input: str | list[str]  # images: data URIs or bare base64 (URLs only with --allow-url-domain)
    modality: Literal["text", "image"] = "text"
    encoding_format: Literal["float", "base64"] = "float"  # base64 = little-endian float32 bytes, as OpenAI's
    dimensions: int | None = Field(default=None, ge=1)  # keep the first N dimensions (renormalised when normalize)
    normalize: bool = True
    user: str | None = None  # accepted for OpenAI compatibility; unused


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ClassifyRequest(_Strict):
    model: str
    images: list[str] = Field(min_length=1)
    labels: list[str] = Field(min_length=1)
    template: str | None = None  # must contain "{}"; default: the Model's own DEFAULT_TEMPLATE
    top_k: int | None = Field(default=None, ge=1)


class LabelScore(BaseModel):
    label: str
    score: float


class Classification(BaseModel):
    index: int
    scores: list[LabelScore]  # sorted, best first


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Classification]
    model: str
    scoring: str  # how scores were computed, e.g. "sigmoid(scale * cos + bias)"


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "siglite"
    family: str | None
    modalities: list[str]
    dimension: int | None
    precision: str
    engine: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
