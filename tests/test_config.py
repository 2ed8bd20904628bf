"""config.py: the architecture is data. SigLIP and CLIP differ by family fields (specs/families/*.json); a checkpoint's
config.json supplies the transformers-named shape fields and cannot change the architecture."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from siglite.config import VisionConfig, families, family, family_of_model_type
from siglite.model import Siglip

SRC = Path(__file__).resolve().parents[1] / "src" / "siglite"


def test_families_are_data():
    fams = families()
    assert set(fams) >= {"siglip", "clip"}
    assert family_of_model_type("clip_vision_model").name == "clip"
    assert family_of_model_type("siglip_text_model").name == "siglip"
    assert family_of_model_type("bert") is None
    siglip, clip = family("siglip"), family("clip")
    assert (siglip.logits, clip.logits) == ("sigmoid", "softmax")
    v_s, v_c = siglip.vision_config({}), clip.vision_config({})
    assert (v_s.pooling, v_s.class_token, v_s.norm_tokens, v_s.projection) == ("map", False, True, False)
    assert (v_c.pooling, v_c.class_token, v_c.pre_norm, v_c.norm_tokens, v_c.patch_bias) == ("cls", True, True,
                                                                                              False, False)
    t_s, t_c = siglip.text_config({}), clip.text_config({})
    assert (t_s.causal, t_s.pooling, t_s.projection_bias) == (False, "last", True)
    assert (t_c.causal, t_c.pooling, t_c.projection_bias, t_c.hidden_act) == (True, "eos", False, "quick_gelu")


def test_config_json_fields_and_architecture():
    """transformers' config.json fields are read as they are (unknown keys ignored); the family's architecture wins
    over anything a config.json says, and the class-implied overrides (no projection) win over both."""
    clip = family("clip")
    d = {"hidden_size": 64, "image_size": 48, "patch_size": 16, "hidden_act": "gelu", "class_token": False,
         "initializer_factor": 1.0, "model_type": "clip_vision_model"}
    cfg = clip.vision_config(d)
    assert (cfg.hidden_size, cfg.grid, cfg.num_tokens, cfg.hidden_act, cfg.class_token) == (64, 3, 10, "gelu", True)
    assert clip.vision_config(d, projection=False).pooled_size == 64
    assert "class_token" not in cfg.to_hf() and cfg.to_hf()["hidden_size"] == 64
    assert clip.text_config({"eos_token_id": 2}).eos_rule == "argmax"
    assert clip.text_config({"eos_token_id": 49407}).eos_rule == "first"
    with pytest.raises(ValueError, match="pooling"):
        VisionConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1, pooling="mean")


def test_absent_parts_are_none_or_identity():
    """One forward: a family's missing parts are None / nn.Identity modules, so the state dict has no such keys."""
    shape = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    siglip = Siglip(family("siglip").vision_config({**shape, "image_size": 16, "patch_size": 8}),
                    family("siglip").text_config({**shape, "vocab_size": 10, "max_position_embeddings": 4}))
    clip = Siglip(family("clip").vision_config({**shape, "image_size": 16, "patch_size": 8, "projection_dim": 12}),
                  family("clip").text_config({**shape, "vocab_size": 10, "max_position_embeddings": 4,
                                              "projection_dim": 12}), logits="softmax")
    s_keys, c_keys = set(siglip.state_dict()), set(clip.state_dict())
    assert {"vision.cls_token", "vision.pre_norm.weight", "vision.proj.weight"} <= c_keys - s_keys
    assert {"vision.patch_embed.bias", "vision.head.probe", "text.head.bias"} <= s_keys - c_keys
    pixels = torch.rand(2, 3, 16, 16)
    (h_s, p_s), (h_c, p_c) = siglip.vision(pixels), clip.vision(pixels)
    assert h_s.shape == (2, 4, 16) and p_s.shape == (2, 16)
    assert h_c.shape == (2, 5, 16) and p_c.shape == (2, 12)
    ids = torch.tensor([[1, 2, 9, 9], [3, 9, 9, 9]])
    assert clip.text(ids)[1].shape == (2, 12)


def test_text_causal_mask_changes_only_what_it_should():
    """CLIP's causal attention: a later token never changes an earlier position's state; the padding mask given is
    always applied (no data-dependent skip), and an all-ones mask equals no mask."""
    cfg = family("clip").text_config(dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, vocab_size=20, max_position_embeddings=6,
                                          projection_dim=8))
    torch.manual_seed(0)
    tower = Siglip(None, cfg, logits="softmax").text
    for p in tower.parameters():
        torch.nn.init.normal_(p, std=0.3)
    a, b = torch.tensor([[1, 2, 3, 19, 5, 6]]), torch.tensor([[1, 2, 3, 19, 7, 8]])
    ha, hb = tower(a)[0], tower(b)[0]
    torch.testing.assert_close(ha[:, :4], hb[:, :4], rtol=0, atol=0)
    assert not torch.allclose(ha[:, 4:], hb[:, 4:])
    ones = torch.ones_like(a)
    torch.testing.assert_close(tower(a, ones)[1], tower(a)[1], rtol=0, atol=1e-6)
    pad = torch.tensor([[1, 1, 1, 1, 0, 0]])
    assert not torch.allclose(tower(a, pad)[0][:, 4:], tower(a)[0][:, 4:])  # padded queries see fewer keys


def test_model_and_registry_import_downwards():
    """config.py imports nothing of siglite; registry.py imports config, not model."""
    def siglite_imports(path):
        tree = ast.parse(path.read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0 and n.module}

    assert siglite_imports(SRC / "config.py") == set()
    assert "model" not in siglite_imports(SRC / "registry.py") and "config" in siglite_imports(SRC / "registry.py")
