"""Model names -> architecture specs. The specs are data (`specs/*.json`, one per architecture); no code here
branches on a model's name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from .errors import LoadError
from .model import TowerConfig


@dataclass(frozen=True)
class Spec:
    """One architecture: tower shapes, tokenizer kind and default image settings, as the hub checkpoint has them."""

    name: str
    hub_id: str
    vision: dict
    text: dict
    tokenizer: str
    image: dict

    @property
    def vision_config(self) -> TowerConfig:
        return TowerConfig.from_dict(self.vision)

    @property
    def text_config(self) -> TowerConfig:
        return TowerConfig.from_dict(self.text)

    def hf_config(self) -> dict:
        """A transformers-style config.json for this architecture (random-weight models at the real shape)."""
        if self.vision.get("variable_resolution"):
            return self._naflex_hf_config()
        return {
            "model_type": "siglip",
            "architectures": ["SiglipModel"],
            "vision_config": {"model_type": "siglip_vision_model", **self.vision},
            "text_config": {"model_type": "siglip_text_model", **self.text},
        }

    def hf_preprocessor_config(self) -> dict:
        img = self.image
        if "max_num_patches" in img:
            return self._naflex_hf_preprocessor_config()
        return {
            "image_processor_type": "SiglipImageProcessor",
            "processor_class": "SiglipProcessor",
            "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
            "rescale_factor": 1 / 255,
            "resample": img["resample"],
            "image_mean": img["image_mean"], "image_std": img["image_std"],
            "size": {"height": img["height"], "width": img["width"]},
        }


    # -- SigLIP 2 NaFlex: transformers' Siglip2Model / Siglip2ImageProcessor layout ------------------------------------
    # Our vision fields keep the square position grid as image_size = grid * patch_size (see
    # checkpoints' naflex_vision_fields); transformers stores it as num_patches = grid**2.

    def _naflex_hf_config(self) -> dict:
        vision = {k: v for k, v in self.vision.items() if k not in ("image_size", "variable_resolution")}
        vision["num_patches"] = (self.vision["image_size"] // self.vision["patch_size"]) ** 2
        return {
            "model_type": "siglip2",
            "architectures": ["Siglip2Model"],
            "vision_config": {"model_type": "siglip2_vision_model", **vision},
            "text_config": {"model_type": "siglip2_text_model", **self.text},
        }

    def _naflex_hf_preprocessor_config(self) -> dict:
        img = self.image
        return {
            "image_processor_type": "Siglip2ImageProcessor",
            "processor_class": "Siglip2Processor",
            "do_resize": True, "do_rescale": True, "do_normalize": True,
            "rescale_factor": 1 / 255,
            "resample": img["resample"],
            "image_mean": img["image_mean"], "image_std": img["image_std"],
            "patch_size": img["patch_size"], "max_num_patches": img["max_num_patches"],
        }


@cache
def _specs() -> dict[str, Spec]:
    specs = {}
    for entry in sorted(resources.files("siglite.specs").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            spec = Spec(**json.loads(entry.read_text()))
            specs[spec.name] = spec
    return specs


def list_models() -> list[Spec]:
    """All known architectures, by name."""
    return list(_specs().values())


def find_spec(name_or_hub_id: str) -> Spec | None:
    """The spec for a short name ('siglip-base-patch16-224') or hub id ('google/siglip-base-patch16-224')."""
    specs = _specs()
    if name_or_hub_id in specs:
        return specs[name_or_hub_id]
    return next((s for s in specs.values() if s.hub_id == name_or_hub_id), None)


def get_spec(name_or_hub_id: str) -> Spec:
    spec = find_spec(name_or_hub_id)
    if spec is None:
        raise LoadError(f"unknown model {name_or_hub_id!r}; `siglite list` shows the known ones")
    return spec
