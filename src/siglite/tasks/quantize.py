"""`siglite quantize`: checkpoint + calibration images -> an INT8 exported folder that `siglite.load` serves, with a
report of what was quantized and the fidelity reached (measured again in the runtime that serves it).

The orchestration of the pure transforms in `siglite.quant` (calibration data, plan, graph rewrite, report) with
loading, export and serving, which sit above them."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import SigliteError
from ..metrics import cosine_summary
from ..quant import report as report_mod
from ..quant.calib import Calibration, prepare
from ..quant.int8 import BATCH, RECIPES, FidelityTarget, Plan, Recipe, plan, refine
from ..quant.isa import SAFE_SIGNED_MAX, WEIGHT_MAX, detect, on_this_cpu

log = logging.getLogger(__name__)

ENGINES = ("onnxruntime", "openvino")  # runtimes that execute the INT8 ONNX graphs
WEIGHT_BITS = {8: WEIGHT_MAX, 7: SAFE_SIGNED_MAX}  # bits -> largest weight magnitude


def quantize(model: str | Path, calib, out: str | Path, *, engine: str = "onnxruntime",
             recipe: str | Recipe = "siglite", target: FidelityTarget | None = None, num_calib: int = 64,
             num_check: int = 16, calib_texts: str | None = None, num_texts: int = 64, preprocess: str = "resize",
             sensitivity_samples: int = 0, revision: str | None = None, allow_pickle: bool = False,
             progress=None, layer: int | list[int] | None = None, post_norm: bool = False,
             max_num_patches: int | None = None, weight_bits: int = 8) -> dict:
    """Post-training INT8 quantization of a checkpoint's towers (see `siglite.quant.int8` for the recipe).

    Args:
        model: checkpoint folder, hub id or name.
        calib: calibration images: folder, glob, list file, tar shards, parquet, or a list of images.
        out: output folder; ``siglite.load(out)`` (or with ``engine=``) serves it.
        engine: runtime that serves the INT8 graphs, recorded in the sidecar ("onnxruntime" or "openvino").
        recipe: a key of `RECIPES` ("siglite", "dynamic", "naive") or a `Recipe`.
        target: fidelity the sensitivity pass keeps layers in float32 for.
        num_calib: calibration images that fit the recipe (64, the default, measured as good as 128 for base-224:
            tokens 0.99993 either way; the statistics pass over them is most of the quantization time).
        num_check: further images (and texts) held out to measure fidelity.
        calib_texts: text file, one calibration text per line (default: built-in prompts).
        num_texts: calibration texts that fit the recipe.
        preprocess: "resize" or "letterbox", as the model will be used.
        sensitivity_samples: held-out samples per per-layer measurement (0, the default: the per-layer pass runs
            only when the fully quantized model misses the target).
        revision: hub revision.
        allow_pickle: accept a pickle checkpoint.
        progress: callable(str) for progress lines (default: logging).
        layer: cut the vision tower at this layer first (see `siglite.export.export`): only the blocks up to it are
            calibrated, quantized and written, and fidelity is measured on that layer's tokens.
        post_norm: apply the final LayerNorm to the cut layer.
        max_num_patches: SigLIP 2 NaFlex models: the fixed patch budget the INT8 vision graph runs at (default: the
            checkpoint's image processor's, 256 for the hub checkpoints); calibration images are cut into at most
            that many patches at their own aspect ratio and padded to it. An error for fixed-resolution models.
        weight_bits: 8 (default; exact on every CPU, stored offset by 128 where u8*s8 kernels saturate: `quant.isa`)
            or 7 (signed weights within +-63, which u8*s8 kernels run exactly on any CPU: on AVX2-only CPUs faster
            than the offset 8-bit form, at one bit less weight precision).

    Returns:
        The report (also written as ``quant_report.json`` and ``.md`` in `out`).
    """
    from ..engines.graph import int8_weight_dtype
    from ..export import build_sidecar, cut_model, export_onnx_graphs, naflex_patch_budget, prepare_folder
    from ..checkpoints import resolve
    from ..checkpoints.layout import load_text_tokenizer as load_tokenizer, read_image_processor
    from ..heads import load_network
    from ..preprocess.naflex import image_config_from_hf

    if engine not in ENGINES:
        raise SigliteError(f"unknown INT8 engine {engine!r}; choose one of {', '.join(ENGINES)}")
    recipe_name = recipe if isinstance(recipe, str) else "custom"
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise SigliteError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        recipe = RECIPES[recipe]
    if weight_bits not in WEIGHT_BITS:
        raise SigliteError(f"weight_bits={weight_bits}: choose one of {', '.join(map(str, WEIGHT_BITS))}")
    if weight_bits != 8:
        recipe = dataclasses.replace(recipe, weight_max=WEIGHT_BITS[weight_bits])
    say = progress or log.info
    t0 = time.perf_counter()
    source = resolve(model, revision=revision)
    net = cut_model(load_network(source, allow_pickle=allow_pickle), layer, post_norm)
    num_patches = naflex_patch_budget(net, source, max_num_patches)  # NaFlex: the graph's fixed budget; else None
    if hasattr(net, "classifier"):  # a fine-tuned classifier: its logits, not the unused pooling head
        from ..heads import without_pooling_head

        net = without_pooling_head(net)
    image_config = image_config_from_hf(read_image_processor(source)) if net.vision is not None else None
    tokenizer = load_tokenizer(source, net.text.cfg.max_position_embeddings) if net.text is not None else None
    cal = prepare(calib, image_config, num_images=num_calib, num_check=num_check, texts=calib_texts,
                  num_texts=num_texts, preprocess=preprocess, max_num_patches=num_patches)
    t_read = time.perf_counter() - t0

    # Every layer planned in INT8, written and measured in the runtime that serves it; only if that misses the
    # target does the simulation choose layers to keep in float32 (`refine`), and the folder is written again.
    p = plan(net, cal, tokenizer, recipe, target, sensitivity_samples=sensitivity_samples, simulate=False,
             progress=say)
    out = prepare_folder(out, source)
    isa = detect()
    weight_dtype = int8_weight_dtype(engine, recipe.weight_max)  # what the engine runs exactly here (`quant.isa`)
    t_export = t_check = 0.0

    def write_and_measure():
        nonlocal t_export, t_check
        t1 = time.perf_counter()
        graphs = export_onnx_graphs(p.model, out, num_patches=num_patches)
        write_int8_graphs(p, out, graphs["files"], weight_dtype)
        kept = [lp.name for lp in p.layers if not lp.quantized]
        summary = {"recipe": recipe_name, "quantized_layers": len(p.layers) - len(kept), "float32_layers": kept,
                   "weight_max": p.recipe.weight_max, "weight_dtype": weight_dtype, "cpu_isa": isa.name,
                   "report": report_mod.REPORT_JSON}
        if num_patches is not None:  # NaFlex: calibrated, measured and exported at this patch budget
            summary["max_num_patches"] = num_patches
        sidecar = build_sidecar(p.model, source, graphs, fmt="onnx", precision="int8", source=str(model),
                                quantization=summary)
        sidecar.engine = engine
        sidecar.save(out)
        t2 = time.perf_counter()
        t_export += t2 - t1
        runtime = measure_runtime(out, engine, net, cal, tokenizer, p.reference)
        say("runtime fidelity: " + ", ".join(f"{k} {v['mean']:.5f}" if isinstance(v, dict) else f"{k} {v:.4f}"
                                             for k, v in runtime.items()))
        t_check += time.perf_counter() - t2
        return kept, summary, sidecar, runtime

    kept, summary, sidecar, runtime = write_and_measure()
    tracked = {k: v for k, v in runtime.items() if k in p.reference}
    if p.recipe.sensitivity and not p.fidelity and not p.target.met(tracked):
        say("the runtime misses the fidelity target: simulating to choose layers to keep in float32")
        refine(p, sensitivity_samples=sensitivity_samples, progress=say)
        if any(not lp.quantized for lp in p.layers):
            kept, summary, sidecar, runtime = write_and_measure()
    summary["fidelity"] = {k: (v["mean"] if isinstance(v, dict) else v) for k, v in runtime.items()}
    sidecar.quantization = summary
    sidecar.save(out)

    info = p.to_dict()
    rep = {"model": str(model), "output": str(out), "engine": engine, "precision": "int8",
           "vision_layer": sidecar.vision_layer, "post_norm": sidecar.post_norm, "max_num_patches": num_patches,
           "recipe_name": recipe_name, "recipe": info["recipe"], "target": info["target"],
           "calibration": {**cal.describe(), "preprocess": preprocess, "failures": cal.failures[:20]},
           "layers": info["layers"], "float32_layers": kept,
           "cpu_isa": {**isa.to_dict(), "weight_dtype": weight_dtype},
           "fidelity": {"simulated": info["fidelity_simulated"], "runtime": runtime},
           "timings_s": {"read_calibration": t_read, **info["timings_s"], "export": t_export,
                         "runtime_check": t_check, "total": time.perf_counter() - t0}}
    report_mod.write(out, rep)
    return rep


def write_int8_graphs(p: Plan, out: Path, files: dict[str, str], weight_dtype: str = "int8") -> None:
    """Rewrite the exported float32 graphs of the migrated model: the plan's INT8 layers become integer matmuls, their
    weights stored as `weight_dtype` (`siglite.quant.isa`)."""
    import onnx

    from ..quant.onnx_int8 import quantize_graph

    for tower, name in files.items():
        path = out / name
        layers = [lp for lp in p.layers if lp.quantized and lp.name.startswith(tower + ".")]
        graph = onnx.load(str(path))
        quantize_graph(graph, {lp.name: p.model.get_submodule(lp.name).weight for lp in layers}, p.recipe,
                       {lp.name: lp.form for lp in layers}, weight_dtype=weight_dtype)
        data = path.with_name(path.name + ".data")
        big = sum(len(t.raw_data) for t in graph.graph.initializer) > 1_500_000_000
        onnx.save(graph, str(path), save_as_external_data=big, all_tensors_to_one_file=True, location=data.name)
        if not big:
            data.unlink(missing_ok=True)


def _grids(batch) -> dict:
    """The engine keyword that carries NaFlex patch grids (none for fixed-size pixels)."""
    return {} if batch.spatial_shapes is None else {"spatial_shapes": batch.spatial_shapes.numpy()}


def measure_runtime(folder: Path, engine: str, reference, cal: Calibration, tokenizer,
                    reference_outputs: dict | None = None) -> dict:
    """Fidelity of the written folder, served by `engine`, against the float32 torch model on the held-out inputs:
    cosine summaries per output and zero-shot top-1 agreement (held-out images ranked against held-out texts).
    `reference_outputs`: the float32 model's outputs on those inputs where already computed (`Plan.reference`)."""
    import torch

    import siglite

    with on_this_cpu():  # a folder written for another CPU (SIGLITE_CPU_ISA) is measured as this CPU runs it exactly
        served = siglite.load(folder, engine=engine).engine
    out: dict = {}
    ref_pooled = got_pooled = None
    sc = served.sidecar
    taps = {"layer": sc.vision_layer, "post_norm": sc.post_norm} if sc.vision_layer is not None else {}
    with torch.inference_mode():
        if cal.check_pixels is not None and reference.vision is not None:
            # NaFlex: patches padded to the graph's budget + their grids; padded tokens zeroed before comparing (as
            # `Probe.outputs`, hence `reference_outputs`, already has them)
            batches = list(cal.check_images.batches(BATCH))
            got = [served.encode_image(b.pixels.numpy(), tokens=True, **taps, **_grids(b)) for b in batches]
            got_hidden = np.concatenate([b.real_tokens(g[1]) for b, g in zip(batches, got)])
            known = reference_outputs or {}
            if "vision_hidden" in known and ("vision_pooled" in known or reference.vision.head is None):
                ref = [(known["vision_hidden"], known.get("vision_pooled"))]
            else:
                ref = [(b.real_tokens(h), p) for b in batches for h, p in [b.forward(reference.vision)]]
            out["vision_hidden"] = cosine_summary(torch.cat([r[0] for r in ref]), got_hidden)
            if reference.vision.head is not None:
                ref_pooled = torch.cat([r[1] for r in ref]).numpy()
                got_pooled = np.concatenate([g[0] for g in got])
                out["vision_pooled"] = cosine_summary(ref_pooled, got_pooled)
            if hasattr(reference, "classifier"):  # a fine-tuned classifier: its logits and top-1 agreement
                ref_l = torch.cat([reference(torch.from_numpy(cal.check_pixels[i:i + BATCH]))
                                   for i in range(0, len(cal.check_pixels), BATCH)]).numpy()
                got_l = np.concatenate([served.image_logits(cal.check_pixels[i:i + BATCH])
                                        for i in range(0, len(cal.check_pixels), BATCH)])
                out["logits"] = cosine_summary(ref_l, got_l)
                out["logits_top1_agreement"] = float((ref_l.argmax(1) == got_l.argmax(1)).mean())
        if cal.check_texts and reference.text is not None:
            ids, mask = tokenizer(cal.check_texts)
            got_t = served.encode_text(ids, mask)
            if "text_pooled" in (reference_outputs or {}):
                ref_t = reference_outputs["text_pooled"].numpy()
            else:
                ref_t = reference.text(torch.from_numpy(ids), torch.from_numpy(mask) if mask is not None else None)[1]
                ref_t = ref_t.numpy()
            out["text_pooled"] = cosine_summary(ref_t, got_t)
            if ref_pooled is not None:
                from ..model import sigmoid_logits

                scale, bias = float(reference.logit_scale), float(reference.logit_bias)
                a = sigmoid_logits(torch.from_numpy(ref_pooled), torch.from_numpy(ref_t), scale, bias).argmax(1)
                b = sigmoid_logits(torch.from_numpy(got_pooled), torch.from_numpy(got_t), scale, bias).argmax(1)
                out["zero_shot_top1_agreement"] = float((a == b).float().mean())
    return out
