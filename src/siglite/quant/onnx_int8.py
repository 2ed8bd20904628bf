"""Rewrite the float32 matmuls of an exported ONNX graph into their INT8 form (standard ONNX ops only).

Per quantized layer ``Y = MatMul(X, W)`` (W a (K, N) initializer, the transposed torch weight) becomes

    dynamic:  Xq, xs, xz = DynamicQuantizeLinear(X)
    static:   Xq = QuantizeLinear(X, xs, xz)                      (xs, xz calibrated constants)
    then      Y = Cast(MatMulInteger(Xq, Wq, xz, 0), float) * (xs * ws)

with Wq INT8 and ws its (N,) or scalar scales. A layer with its last k input channels in float32 (the recipe's
outlier slice) computes ``Slice(X, 0, K - k) -> the above with Wq[:K - k]`` plus ``MatMul(Slice(X, K - k, K),
W[K - k:])`` in float32. This is the layout ONNX Runtime's `quantize_dynamic` writes, which
its graph optimizer fuses into one ``DynamicQuantizeMatMul`` (or ``MatMulIntegerToFloat``) kernel; OpenVINO reads it
too. Layers are found by value (an initializer equal to a layer's transposed weight), so no exporter naming scheme
is relied on.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..errors import SigliteError
from .int8 import Recipe, act_qparams, quantize_weight


def _key(array: np.ndarray) -> tuple:
    a = np.ascontiguousarray(array, np.float32)
    return a.shape, hashlib.sha1(a.tobytes()).hexdigest()


def quantize_graph(graph_model, weights: dict[str, torch.Tensor], recipe: Recipe,
                   act_ranges: dict[str, tuple[float, float] | None],
                   float_channels: dict[str, int] | None = None) -> list[str]:
    """Quantize, in place, the MatMuls (and Gemms) of `graph_model` (an onnx.ModelProto) whose constant right operand
    is the transposed weight of a layer in `weights` (layer name -> (N, K) float weight, as in the exported model);
    `float_channels` (layer name -> k) keeps a layer's last k input channels in float32.

    Returns:
        The names of the layers quantized; every layer of `weights` must be found exactly once.
    """
    from onnx import TensorProto, helper, numpy_helper

    recipe = recipe.resolved()
    by_value = {_key(w.detach().float().t().numpy()): name for name, w in weights.items()}
    g = graph_model.graph
    inits = {t.name: t for t in g.initializer}
    found: dict[str, str] = {}
    nodes, uses = [], {}
    for node in g.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    for node in g.node:
        name = None
        if _plain_matmul(node) and node.input[1] in inits:
            b = numpy_helper.to_array(inits[node.input[1]])
            name = by_value.get(_key(b.T if _attr(node, "transB", 0) else b))
        if name is None:
            nodes.append(node)
            continue
        if name in found:
            raise SigliteError(f"layer {name}: its weight appears in two MatMuls; cannot quantize unambiguously")
        found[name] = node.name
        x, w_name, y = node.input[0], node.input[1], node.output[0]
        p = f"{w_name}_int8"
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        if bias is not None:  # Gemm's C: the bias add stays float32, after the integer product
            y = p + "_nobias"
        weight = weights[name].detach().float()
        k = (float_channels or {}).get(name, 0)
        split = weight.shape[1] - k
        q, s = quantize_weight(weight[:, :split], recipe.weights, recipe.weight_max)  # (N, K - k), (N,)
        scale = s.numpy().astype(np.float32) if recipe.weights == "channel" else s[:1].numpy().reshape(())
        new_inits = [numpy_helper.from_array(np.ascontiguousarray(q.t().numpy()), p + "_w"),
                     numpy_helper.from_array(np.zeros(scale.shape, np.int8), p + "_wzp"),
                     numpy_helper.from_array(np.asarray(scale, np.float32), p + "_ws")]
        if k:  # the outlier slice: x[..., split:] @ W[:, split:].T in float32, added to the INT8 product
            new_inits += [numpy_helper.from_array(np.asarray(v, np.int64), f"{p}_{n}")
                          for n, v in (("at", [0]), ("split", [split]), ("end", [weight.shape[1]]), ("axis", [-1]))]
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(weight[:, split:].t().numpy()), p + "_wf"))
            nodes += [helper.make_node("Slice", [x, p + "_at", p + "_split", p + "_axis"], [p + "_xi"], p + "_slice_i"),
                      helper.make_node("Slice", [x, p + "_split", p + "_end", p + "_axis"], [p + "_xf"],
                                       p + "_slice_f"),
                      helper.make_node("MatMul", [p + "_xf", p + "_wf"], [p + "_yf"], p + "_mm_f")]
            x = p + "_xi"
            y_total, y = y, p + "_yi"
        if recipe.activations == "dynamic":
            quant = [helper.make_node("DynamicQuantizeLinear", [x], [p + "_xq", p + "_xs", p + "_xzp"], p + "_dql"),
                     helper.make_node("Mul", [p + "_xs", p + "_ws"], [p + "_s"], p + "_scale")]
        else:
            xs, xzp = act_qparams(*act_ranges[name])
            new_inits += [numpy_helper.from_array(np.asarray(float(xs), np.float32), p + "_xs"),
                          numpy_helper.from_array(np.asarray(int(xzp), np.uint8), p + "_xzp"),
                          numpy_helper.from_array((float(xs) * np.asarray(scale, np.float32)).astype(np.float32),
                                                  p + "_s")]
            quant = [helper.make_node("QuantizeLinear", [x, p + "_xs", p + "_xzp"], [p + "_xq"], p + "_ql")]
        nodes += quant + [
            helper.make_node("MatMulInteger", [p + "_xq", p + "_w", p + "_xzp", p + "_wzp"], [p + "_acc"], p + "_mm"),
            helper.make_node("Cast", [p + "_acc"], [p + "_accf"], p + "_cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + "_accf", p + "_s"], [y], p + "_out"),
        ]
        if k:
            nodes.append(helper.make_node("Add", [y, p + "_yf"], [y_total], p + "_add_f"))
            y = y_total
        if bias is not None:
            nodes.append(helper.make_node("Add", [y, bias], [node.output[0]], p + "_bias"))
        g.initializer.extend(new_inits)
        uses[w_name] -= 1
    missing = sorted(set(weights) - set(found))
    if missing:
        raise SigliteError(f"INT8 rewrite: no MatMul found for layer(s) {', '.join(missing[:3])}")
    del g.node[:]
    g.node.extend(nodes)
    unused = [t for t in g.initializer if uses.get(t.name, 1) == 0]
    for t in unused:
        g.initializer.remove(t)
    return sorted(found)


def _attr(node, name: str, default):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _plain_matmul(node) -> bool:
    """MatMul, or a Gemm that is one (alpha 1, beta 1, A not transposed): what torch's linear exports to."""
    if node.op_type == "MatMul":
        return True
    return (node.op_type == "Gemm" and _attr(node, "alpha", 1.0) == 1.0 and _attr(node, "beta", 1.0) == 1.0
            and not _attr(node, "transA", 0))


def narrow_weights(graph_model, weight_max: int) -> int:
    """Re-quantize, in place, the INT8 weights `quantize_graph` wrote to at most `weight_max` in magnitude (e.g. 8-bit
    weights to 7-bit, for a CPU whose u8 x s8 kernels saturate with 8-bit ones; `isa`): q' = round(q * r) with r =
    weight_max / max|q| per layer, and the layer's weight scale (and, for static activations, the combined scale)
    divided by r. Returns the number of layers changed."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph_model.graph.initializer}
    changed = 0
    for name, t in inits.items():
        if not name.endswith("_int8_w"):
            continue
        q = numpy_helper.to_array(t).astype(np.int32)
        top = int(np.abs(q).max()) if q.size else 0
        if top <= weight_max:
            continue
        r = weight_max / top
        t.CopyFrom(numpy_helper.from_array(np.clip(np.round(q * r), -weight_max, weight_max).astype(np.int8), name))
        prefix = name[: -len("_w")]
        for scale in (prefix + "_ws", prefix + "_s"):  # "_s" exists as an initializer for static activations only
            if scale in inits:
                a = numpy_helper.to_array(inits[scale])
                inits[scale].CopyFrom(numpy_helper.from_array((a / r).astype(np.float32), scale))
        changed += 1
    return changed
