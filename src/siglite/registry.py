"""Model names -> architecture specs. The specs are data (`specs/*.json`, one per architecture; the families'
architecture in `specs/families/`); no code here branches on a model's name."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from .config import Family, TextConfig, VisionConfig, family
from .errors import LoadError


@dataclass(frozen=True)
class Spec:
    """One architecture: tower shapes, tokenizer kind and default image settings, as the hub checkpoint has them.

    `family` names the data in specs/families/ that fills in the architecture (SigLIP, CLIP) and the transformers
    class defaults; `model` holds model-level transformers fields (CLIP's `projection_dim`).
    """

    name: str
    hub_id: str
    vision: dict
    text: dict
    tokenizer: str
    image: dict
    family: str = "siglip"
    model: dict = field(default_factory=dict)

    @property
    def family_config(self) -> Family:
        return family(self.family)

    @property
    def vision_config(self) -> VisionConfig:
        return self.vision_config_with()

    @property
    def text_config(self) -> TextConfig:
        return self.text_config_with()

    def vision_config_with(self, **overrides) -> VisionConfig:
        return self.family_config.vision_config({**self.vision, **self.model}, **overrides)

    def text_config_with(self, **overrides) -> TextConfig:
        return self.family_config.text_config({**self.text, **self.model}, **overrides)

    def hf_config(self) -> dict:
        """A transformers-style config.json for this architecture (random-weight models at the real shape)."""
        if self.family_config.vision["arch"].get("variable_resolution"):
            return self._naflex_hf_config()
        hf = self.family_config.hf
        return {
            "model_type": hf["model_type"],
            "architectures": hf["architectures"],
            **self.model,
            "vision_config": {"model_type": hf["vision_model_type"], **self.vision},
            "text_config": {"model_type": hf["text_model_type"], **self.text},
        }

    def hf_preprocessor_config(self) -> dict:
        """preprocessor_config.json: SigLIP stretches to height x width; CLIP resizes the shortest edge to
        `shortest_edge` and centre-crops `crop_size` (CLIPImageProcessor)."""
        img = self.image
        if "max_num_patches" in img:
            return self._naflex_hf_preprocessor_config()
        hf = self.family_config.hf
        config = {
            "image_processor_type": hf["image_processor_type"],
            "processor_class": hf["processor_class"],
            "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
            "rescale_factor": 1 / 255,
            "resample": img["resample"],
            "image_mean": img["image_mean"], "image_std": img["image_std"],
        }
        if "shortest_edge" in img:
            crop = img["crop_size"]
            config.update(size={"shortest_edge": img["shortest_edge"]}, do_center_crop=True,
                          crop_size={"height": crop, "width": crop})
        else:
            config["size"] = {"height": img["height"], "width": img["width"]}
        return config

    # -- SigLIP 2 NaFlex: transformers' Siglip2Model / Siglip2ImageProcessor layout ------------------------------------
    # Our vision fields keep the square position grid as image_size = grid * patch_size (see
    # checkpoints.transformers_siglip.naflex_vision_fields); transformers stores it as num_patches = grid**2.

    def _naflex_hf_config(self) -> dict:
        hf = self.family_config.hf
        vision = {k: v for k, v in self.vision.items() if k != "image_size"}
        vision["num_patches"] = (self.vision["image_size"] // self.vision["patch_size"]) ** 2
        return {
            "model_type": hf["model_type"],
            "architectures": hf["architectures"],
            "vision_config": {"model_type": hf["vision_model_type"], **vision},
            "text_config": {"model_type": hf["text_model_type"], **self.text},
        }

    def _naflex_hf_preprocessor_config(self) -> dict:
        img = self.image
        hf = self.family_config.hf
        return {
            "image_processor_type": hf["image_processor_type"],
            "processor_class": hf["processor_class"],
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
