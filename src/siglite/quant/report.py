"""The quantization report written next to a quantized model: ``quant_report.json`` (everything) and
``quant_report.md`` (for people): recipe, per-layer decisions and measurements, fidelity reached."""

from __future__ import annotations

import json
from pathlib import Path

REPORT_JSON = "quant_report.json"
REPORT_MD = "quant_report.md"
OUTPUT_NAMES = {"vision_hidden": "vision last_hidden_state", "vision_pooled": "vision pooler_output",
                "text_pooled": "text pooler_output", "logits": "classifier logits"}


def write(folder: Path, report: dict) -> tuple[Path, Path]:
    folder = Path(folder)
    js = folder / REPORT_JSON
    js.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
    md = folder / REPORT_MD
    md.write_text(markdown(report))
    return js, md


def _jsonable(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def markdown(report: dict) -> str:
    r = report
    layers = r["layers"]
    kept = [lp for lp in layers if not lp["quantized"]]
    sliced = [lp for lp in layers if lp["quantized"] and lp.get("float_channels")]
    recipe, target = r["recipe"], r["target"]
    lines = [
        f"# INT8 quantization report: {r['model']}",
        "",
        f"Served by `{r['engine']}` from `{r['output']}`. {len(layers) - len(kept)} of {len(layers)} linear layers "
        f"run in INT8; {len(kept)} stay in float32. Everything that is not a linear layer (patch embedding, "
        "LayerNorms, attention softmax and its activation matmuls, GELU, residual adds) stays in float32."
        + (f" {len(sliced)} INT8 layers compute a few outlier input channels in float32 beside the INT8 product "
           "(massive activations; see Per layer)." if sliced else ""),
        "",
        "## Recipe",
        "",
        "| setting | value |",
        "|---|---|",
        f"| name | {r['recipe_name']} |",
        f"| weights | symmetric INT8 (max {recipe['weight_max']}), one scale per "
        f"{'output channel' if recipe['weights'] == 'channel' else 'matrix'} |",
        f"| activations | asymmetric UINT8, one {recipe['activations']} scale per tensor |",
        *([_isa(r["cpu_isa"])] if "cpu_isa" in r else []),
        f"| SmoothQuant alphas tried per layer | {', '.join(map(str, recipe['alphas'])) or 'none (no migration)'} |",
        f"| outlier channels in float32 (LLM.int8()-style slice), counts tried | "
        f"{', '.join(map(str, recipe.get('float_channels', ()))) or 'none'} |",
        f"| sensitivity pass | {'when the target is missed' if recipe['sensitivity'] else 'no'} |",
        f"| fidelity target (held-out calibration) | cosine mean >= {target['mean']}, 1%-low >= {target['low']} |",
        f"| calibration | {_calib(r['calibration'])} |",
        "",
        "## Fidelity against float32",
        "",
        "Per-sample cosine of each output, flattened (the seed's measure), on held-out calibration inputs. The "
        "written model is measured in its runtime first; the simulation (exact integer arithmetic in float32) runs "
        "only when that misses the target or a per-layer sensitivity pass is asked for"
        + ("" if r["fidelity"]["simulated"] else " (neither happened here)") + ".",
        "",
        "| output | simulated, all layers INT8 | simulated, final | runtime: mean ( min ~ max ), 1%-low |",
        "|---|---|---|---|",
    ]
    sim = r["fidelity"]["simulated"]
    for key, rt in r["fidelity"]["runtime"].items():
        if key not in OUTPUT_NAMES:
            continue
        lines.append(f"| {OUTPUT_NAMES[key]} | {_mean(sim.get('all_quantized', {}).get(key))} "
                     f"| {_mean(sim.get('final', {}).get(key))} "
                     f"| {rt['mean']:.5f} ( {rt['min']:.5f} ~ {rt['max']:.5f} ), {rt['p1']:.5f} |")
    if "zero_shot_top1_agreement" in r["fidelity"]["runtime"]:
        lines += ["", f"Zero-shot top-1 agreement (held-out images against held-out texts): "
                      f"{r['fidelity']['runtime']['zero_shot_top1_agreement']:.4f}"]
    if "logits_top1_agreement" in r["fidelity"]["runtime"]:
        lines += ["", f"Classifier top-1 agreement (held-out images): "
                      f"{r['fidelity']['runtime']['logits_top1_agreement']:.4f}"]
    if r.get("vision_layer") is not None:
        lines += ["", f"Vision tower cut at hidden_states {r['vision_layer']}"
                      f"{' with the final LayerNorm' if r.get('post_norm') else ''}: 'vision last_hidden_state' "
                      "above is that layer's tokens."]
    lines += ["", "## Layers kept in float32", ""]
    lines += [f"- `{lp['name']}`: {lp['reason']}" for lp in kept] or ["none: the fully quantized model met the target"]
    lines += ["", "## Per layer", "",
              "alpha: SmoothQuant strength chosen by the layer's measured INT8 error (relative squared error of its "
              "product on calibration rows, without and with migration). Alone: output cosine (mean) with only this "
              "layer in INT8. Float channels: input channels computed in float32 beside the INT8 product, and the "
              "layer's error without that slice.", "",
              "| layer | precision | alpha | error, no migration | error, chosen | float channels (error without) "
              "| alone: worst output cosine |",
              "|---|---|---|---|---|---|---|"]
    for lp in layers:
        errors = lp["errors"]
        alone = min(v["mean"] for v in lp["sensitivity"].values()) if lp.get("sensitivity") else None
        k, ch = lp.get("float_channels", 0), lp.get("channel_errors") or {}
        chs = f"{k} ({ch['0']:.2e} -> {ch[str(k)]:.2e})" if k else ("0" if ch else "")
        if lp.get("float_rows"):
            chs = f"{lp['float_rows']} output rows (the next layer's float channels)"
        lines.append(f"| {lp['name']} | {'int8' if lp['quantized'] else 'float32'} | {lp['alpha']} "
                     f"| {errors.get('0.0', float('nan')):.2e} | {errors[str(lp['alpha'])]:.2e} | {chs} "
                     f"| {'' if alone is None else f'{alone:.6f}'} |")
    lines += ["", "## Time", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["timings_s"].items()]
    return "\n".join(lines) + "\n"


def _mean(s: dict | None) -> str:
    return "" if not s else f"{s['mean']:.5f} (1%-low {s['p1']:.5f})"


def _calib(c: dict) -> str:
    budget = f", NaFlex patch budget {c['max_num_patches']} (the INT8 graph's)" if c.get("max_num_patches") else ""
    return (f"{c['fit_images']} images + {c['fit_texts']} texts fit, {c['check_images']} images + "
            f"{c['check_texts']} texts held out, {c['skipped_images']} images skipped, preprocess {c['preprocess']}"
            f"{budget}")


def _isa(isa: dict) -> str:
    how = "forced by SIGLITE_CPU_ISA" if isa["forced"] else "detected"
    exact = "accumulates u8*s8 exactly" if isa["exact"] else "u8*s8 pair sums can saturate"
    stored = ("weights stored as uint8 offset by 128, run by exact u8*u8 kernels" if isa["weight_dtype"] == "uint8"
              else "weights stored signed (int8)")
    return (f"| CPU instruction set | {isa['name']} ({how}); {exact}; {stored}; engines convert losslessly at load "
            "where a CPU or runtime wants the other form |")
