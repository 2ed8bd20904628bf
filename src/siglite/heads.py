"""Classification heads on the SigLIP vision tower: transformers' `SiglipForImageClassification`, loaded and saved in
its own hub layout.

The model is transformers' (`models/siglip/modeling_siglip.py`, `SiglipForImageClassification.forward`): the mean of
the final-LayerNormed patch tokens (`last_hidden_state.mean(1)`; the attention-pooling head is not used) -> one
`nn.Linear` to the labels. `config.problem_type` "multi_label_classification" trains with BCE-with-logits and serves
sigmoid probabilities; "single_label_classification" cross-entropy and softmax. A folder written by `save_classifier`
loads with `transformers.AutoModelForImageClassification.from_pretrained` and with `siglite.load`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .errors import LoadError

ARCHITECTURE = "SiglipForImageClassification"
MULTI_LABEL = "multi_label_classification"
SINGLE_LABEL = "single_label_classification"
PREFIX = "vision_model."  # SiglipForImageClassification.vision_model is a SiglipVisionModel (its own vision_model.*)
HEAD_KEYS = ("classifier.weight", "classifier.bias")


class Classifier(nn.Module):
    """A vision tower with a linear head on its mean patch token (SiglipForImageClassification).

    Attributes:
        vision: the `VisionTower` (its pooling head, if any, is kept for the hub layout but not used).
        classifier: (C, D) linear layer.
        text: always None (so code written for `Siglip` sees a vision-only model).
    """

    logit_kind = "sigmoid"  # engines read it as from a `Siglip`; a classifier has no image-text logits

    def __init__(self, vision: nn.Module, num_labels: int, *, multi_label: bool):
        super().__init__()
        self.vision = vision
        self.text = None
        self.classifier = nn.Linear(vision.cfg.hidden_size, num_labels)
        self.multi_label = multi_label
        # a vision-only Siglip carries zeros here too; engines read them
        self.logit_scale = nn.Parameter(torch.zeros(1))
        self.logit_bias = nn.Parameter(torch.zeros(1))
        with torch.no_grad():  # transformers' _init_weights for SiglipForImageClassification: N(0, D^-0.5), bias 0
            self.classifier.weight.normal_(0.0, vision.cfg.hidden_size ** -0.5)
            self.classifier.bias.zero_()

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> the head's input (B, D): the mean of last_hidden_state over tokens (no pooling head)."""
        return self.vision.forward_intermediates(pixels, -1, post_norm=True).mean(dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> logits (B, C)."""
        return self.classifier(self.features(pixels))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """transformers' `loss_function` for the problem type: BCE-with-logits on (B, C) 0/1 targets, or
        cross-entropy on (B,) class indices."""
        if self.multi_label:
            return nn.functional.binary_cross_entropy_with_logits(logits, targets.float())
        return nn.functional.cross_entropy(logits, targets.long())


def without_pooling_head(model: Classifier) -> Classifier:
    """A copy sharing the weights, minus the tower's attention-pooling head, which the classifier does not use (the
    hub layout keeps it; quantizers should not calibrate or rewrite it)."""
    import copy

    out = copy.copy(model)
    out._modules = dict(model._modules)
    vision = copy.copy(model.vision)
    vision._modules = {**model.vision._modules, "head": None}
    out._modules["vision"] = vision
    return out


def is_classifier(config: dict) -> bool:
    return ARCHITECTURE in (config.get("architectures") or [])


def labels_of(config: dict) -> list[str]:
    id2label = config.get("id2label") or {}
    try:
        return [str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in range(len(id2label))]
    except KeyError as e:
        raise LoadError(f"config.json: id2label must map 0..{len(id2label) - 1} to names (missing {e})") from None


def load_network(folder: Path, *, allow_pickle: bool = False) -> nn.Module:
    """A checkpoint folder -> `Siglip`, or `Classifier` for a SiglipForImageClassification folder."""
    from .checkpoints import CONFIG, load_model, read_json

    if (Path(folder) / CONFIG).is_file() and is_classifier(read_json(Path(folder) / CONFIG)):
        return load_classifier(folder, allow_pickle=allow_pickle)
    return load_model(Path(folder), allow_pickle=allow_pickle)[1]


def load_classifier(folder: Path, *, allow_pickle: bool = False) -> Classifier:
    """Read a SiglipForImageClassification folder: the vision tower through siglite's key map (every weight checked),
    plus the linear head."""
    from .checkpoints import CONFIG, Checkpoint, build_model, read_json, read_weights
    from .config import family

    folder = Path(folder)
    config = read_json(folder / CONFIG)
    labels = labels_of(config)
    weights = read_weights(folder, allow_pickle=allow_pickle)
    missing = [k for k in HEAD_KEYS if k not in weights]
    if missing:
        raise LoadError(f"{folder}: classifier weight(s) missing: {', '.join(missing)}")
    head = {k: weights.pop(k) for k in HEAD_KEYS}
    if head["classifier.weight"].shape[0] != len(labels):
        raise LoadError(f"{folder}: classifier has {head['classifier.weight'].shape[0]} outputs, id2label "
                        f"{len(labels)} labels")
    stray = sorted(k for k in weights if not k.startswith(PREFIX))
    if stray:
        raise LoadError(f"{folder}: {len(stray)} unused weight(s): {', '.join(stray[:5])}")
    weights = {k[len(PREFIX):]: v for k, v in weights.items()}
    try:
        vcfg = family("siglip").vision_config(config["vision_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise LoadError(f"{folder / CONFIG}: incomplete vision_config ({e})") from e
    ckpt = Checkpoint(folder, config, vcfg, None, format="transformers_siglip", optional={"logit_scale", "logit_bias"})
    tower = build_model(ckpt, weights).vision
    model = Classifier(tower, len(labels), multi_label=config.get("problem_type") == MULTI_LABEL)
    with torch.no_grad():
        model.classifier.weight.copy_(head["classifier.weight"].float())
        model.classifier.bias.copy_(head["classifier.bias"].float())
    return model.eval()


def classifier_config(base: dict, labels: list[str], *, multi_label: bool) -> dict:
    """config.json of a SiglipForImageClassification built on the checkpoint whose config is `base` (a SiglipModel
    config, or a flat SiglipVisionConfig for vision-only checkpoints)."""
    if base.get("model_type") == "siglip_vision_model":  # flat vision config -> SiglipConfig with its defaults
        base = {"model_type": "siglip", "vision_config": {**base, "model_type": "siglip_vision_model"}}
    config = {k: v for k, v in base.items() if k not in ("id2label", "label2id", "num_labels", "problem_type")}
    config.update(architectures=[ARCHITECTURE], problem_type=MULTI_LABEL if multi_label else SINGLE_LABEL,
                  id2label={str(i): name for i, name in enumerate(labels)},
                  label2id={name: i for i, name in enumerate(labels)})
    return config


def save_classifier(model: Classifier, folder: str | Path, base_config: dict, labels: list[str],
                    source: str | Path | None = None) -> Path:
    """Write `model` as a SiglipForImageClassification hub folder: config.json (id2label, label2id, problem_type),
    model.safetensors in transformers' names, and the source checkpoint's image processor (preprocessor_config.json
    and processor_config.json)."""
    from safetensors.torch import save_file

    from .checkpoints.layout import read_image_processor, write_processor_files
    from .checkpoints.transformers_siglip import to_hf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tower = to_hf(_VisionOnly(model.vision))
    state = {PREFIX + k: v for k, v in tower.items()}
    state.update({k: v.detach().float().cpu().contiguous() for k, v in
                  (("classifier.weight", model.classifier.weight), ("classifier.bias", model.classifier.bias))})
    config = classifier_config(base_config, labels, multi_label=model.multi_label)
    tmp = folder / "model.safetensors.tmp"
    save_file(state, tmp, metadata={"format": "pt"})
    tmp.replace(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if source is not None:  # the source checkpoint's image preprocessing, in both processor files
        write_processor_files(folder, read_image_processor(source))
    return folder


class _VisionOnly:
    """What `transformers_siglip.to_hf` reads from a model: the towers (vision only here)."""

    def __init__(self, vision: nn.Module):
        self.vision, self.text = vision, None

    def state_dict(self) -> dict:
        return {f"vision.{k}": v for k, v in self.vision.state_dict().items()}
