"""Rewrite the float32 matmuls of an exported ONNX graph into their INT8 form (standard ONNX ops only).

Per quantized layer ``Y = MatMul(X, W)`` (W a (K, N) initializer, the transposed torch weight) becomes

    dynamic:  Xq, xs, xz = DynamicQuantizeLinear(X)
    static:   Xq = QuantizeLinear(X, xs, xz)                      (xs, xz calibrated constants)
    then      Y = Cast(MatMulInteger(Xq, Wq, xz, 0), float) * (xs * ws)

with Wq the INT8 weights and ws their (N,) or scalar scales. Wq is stored signed (zero point 0) or, for CPUs whose u8 x
s8 kernels can saturate, as uint8 Wq + 128 with zero point 128 (`isa`; the same numbers, converted losslessly by
`convert_weights`). A layer with its last k input channels in float32 (the recipe's outlier slice) computes
``Slice(X, 0, K - k) -> the above with Wq[:K - k]`` plus ``MatMul(Slice(X, K - k, K), W[K - k:])`` in float32; one with
its last r output columns in float32 (the layer producing those channels) concatenates ``MatMul(X, W[:, N - r:])`` in
float32 after the INT8 product of the others. This is the layout ONNX Runtime's `quantize_dynamic` writes, which its
graph optimizer fuses into one ``DynamicQuantizeMatMul`` (or ``MatMulIntegerToFloat``) kernel; OpenVINO reads it too.
Layers are found by value (an initializer equal to a layer's transposed weight), so no exporter naming scheme is relied
on.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..errors import SigliteError
from .int8 import Int8Form, Recipe, act_qparams, quantize_weight

WEIGHT_DTYPES = ("int8", "uint8")


def _key(array: np.ndarray) -> tuple:
    a = np.ascontiguousarray(array, np.float32)
    return a.shape, hashlib.sha1(a.tobytes()).hexdigest()


def quantize_graph(graph_model, weights: dict[str, torch.Tensor], recipe: Recipe,
                   forms: dict[str, Int8Form] | None = None, weight_dtype: str = "int8") -> list[str]:
    """Quantize, in place, the MatMuls (and Gemms) of `graph_model` (an onnx.ModelProto) whose constant right operand
    is the transposed weight of a layer in `weights` (layer name -> (N, K) float weight, as in the exported model),
    each in its `forms` entry (layer name -> `Int8Form`: static range, float32 input channels and outputs, per-token
    input scales; default: plain). `weight_dtype`: "int8" (signed weights) or "uint8" (offset by 128;
    `isa.CpuIsa.weight_dtype`).

    Returns:
        The names of the layers quantized; every layer of `weights` must be found exactly once.
    """
    from onnx import TensorProto, helper, numpy_helper

    if weight_dtype not in WEIGHT_DTYPES:
        raise SigliteError(f"INT8 weight storage {weight_dtype!r}: choose one of {', '.join(WEIGHT_DTYPES)}")
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
        new_inits = []
        weight = weights[name].detach().float()
        form = (forms or {}).get(name, Int8Form())
        k, r = form.float_channels, form.float_rows
        split, rows = weight.shape[1] - k, weight.shape[0] - r
        if r:  # the float rows: X @ W[N - r:].T in float32, concatenated after the others
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(weight[rows:].t().numpy()), p + "_wr"))
            nodes.append(helper.make_node("MatMul", [x, p + "_wr"], [p + "_yr"], p + "_mm_r"))
            y_rows, y = y, p + "_ymain"
        weight = weight[:rows]
        q, s = quantize_weight(weight[:, :split], recipe.weights, recipe.weight_max)  # (N - r, K - k), (N - r,)
        scale = s.numpy().astype(np.float32) if recipe.weights == "channel" else s[:1].numpy().reshape(())
        wq, wzp = _stored(np.ascontiguousarray(q.t().numpy().astype(np.int8)), scale.shape, weight_dtype)
        new_inits += [numpy_helper.from_array(wq, p + "_w"), numpy_helper.from_array(wzp, p + "_wzp"),
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
        if form.per_token:
            quant = _per_token_quant(helper, TensorProto, x, p)
        elif recipe.activations == "dynamic":
            quant = [helper.make_node("DynamicQuantizeLinear", [x], [p + "_xq", p + "_xs", p + "_xzp"], p + "_dql"),
                     helper.make_node("Mul", [p + "_xs", p + "_ws"], [p + "_s"], p + "_scale")]
        else:
            if form.act_range is None:
                raise SigliteError(f"layer {name}: static activations need its calibrated range (Int8Form.act_range)")
            xs, xzp = act_qparams(*form.act_range)
            new_inits += [numpy_helper.from_array(np.asarray(float(xs), np.float32), p + "_xs"),
                          numpy_helper.from_array(np.asarray(int(xzp), np.uint8), p + "_xzp"),
                          numpy_helper.from_array((float(xs) * np.asarray(scale, np.float32)).astype(np.float32),
                                                  p + "_s")]
            quant = [helper.make_node("QuantizeLinear", [x, p + "_xs", p + "_xzp"], [p + "_xq"], p + "_ql")]
        tokens = form.per_token
        nodes += quant + [
            helper.make_node("MatMulInteger", [p + "_xq", p + "_w", p + "_xzp", p + "_wzp"], [p + "_acc"], p + "_mm"),
            helper.make_node("Cast", [p + "_acc"], [p + "_accf"], p + "_cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + "_accf", p + "_s"], [p + "_yw" if tokens else y], p + "_out"),
        ]
        if tokens:
            nodes.append(helper.make_node("Mul", [p + "_yw", p + "_xs"], [y], p + "_out_rows"))
        if k:
            nodes.append(helper.make_node("Add", [y, p + "_yf"], [y_total], p + "_add_f"))
            y = y_total
        if r:
            nodes.append(helper.make_node("Concat", [y, p + "_yr"], [y_rows], p + "_concat_r", axis=-1))
            y = y_rows
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


def _per_token_quant(helper, TensorProto, x: str, p: str) -> list:
    """Nodes quantizing `x` (..., K) per token, symmetric: s = max|x_row| / 127 (..., 1), xq = uint8(round(x / s) +
    128), with outputs p_xq, p_xzp (the scalar 128), p_s (ws: the weight scales) and p_xs (the row scales, which
    the caller multiplies in after those: ONNX Runtime's fusion of the integer matmul with one (..., N) scale
    tensor does not compute it as written). Plain ONNX ops, as both ONNX Runtime and OpenVINO run them (ONNX
    Runtime's MatMulInteger rejects per-row zero points)."""
    from onnx import numpy_helper

    consts = [helper.make_node("Constant", [], [p + "_c127"], p + "_k127",
                               value=numpy_helper.from_array(np.asarray(127.0, np.float32))),
              helper.make_node("Constant", [], [p + "_ctiny"], p + "_ktiny",
                               value=numpy_helper.from_array(np.asarray(1e-30, np.float32))),
              helper.make_node("Constant", [], [p + "_c128"], p + "_k128",
                               value=numpy_helper.from_array(np.asarray(128.0, np.float32))),
              helper.make_node("Constant", [], [p + "_xzp"], p + "_kzp",
                               value=numpy_helper.from_array(np.asarray(128, np.uint8))),
              helper.make_node("Constant", [], [p + "_axes"], p + "_kaxes",
                               value=numpy_helper.from_array(np.asarray([-1], np.int64)))]
    return consts + [
        helper.make_node("Abs", [x], [p + "_abs"], p + "_absn"),
        helper.make_node("ReduceMax", [p + "_abs", p + "_axes"], [p + "_amax"], p + "_amaxn", keepdims=1),
        helper.make_node("Div", [p + "_amax", p + "_c127"], [p + "_xs0"], p + "_xs0n"),
        helper.make_node("Max", [p + "_xs0", p + "_ctiny"], [p + "_xs"], p + "_xsn"),
        helper.make_node("Div", [x, p + "_xs"], [p + "_xd"], p + "_xdn"),
        helper.make_node("Round", [p + "_xd"], [p + "_xr"], p + "_xrn"),
        helper.make_node("Add", [p + "_xr", p + "_c128"], [p + "_xo"], p + "_xon"),
        helper.make_node("Cast", [p + "_xo"], [p + "_xq"], p + "_xqn", to=TensorProto.UINT8),
        helper.make_node("Identity", [p + "_ws"], [p + "_s"], p + "_scale"),  # the row scales are applied after
    ]


def _attr(node, name: str, default):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _plain_matmul(node) -> bool:
    """MatMul, or a Gemm that is one (alpha 1, beta 1, A not transposed): what torch's linear exports to."""
    if node.op_type == "MatMul":
        return True
    return (node.op_type == "Gemm" and _attr(node, "alpha", 1.0) == 1.0 and _attr(node, "beta", 1.0) == 1.0
            and not _attr(node, "transA", 0))


def _stored(q: np.ndarray, zp_shape: tuple, weight_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Signed weights q (|q| <= 127) in the storage form `weight_dtype`, with their zero point(s) of `zp_shape`."""
    if weight_dtype == "uint8":
        return (q.astype(np.int16) + 128).astype(np.uint8), np.full(zp_shape, 128, np.uint8)
    return q, np.zeros(zp_shape, np.int8)


def convert_weights(graph_model, weight_dtype: str) -> int:
    """Store, in place, the INT8 weights `quantize_graph` wrote in the form `weight_dtype`: signed ("int8", zero point
    0) or offset by 128 ("uint8", zero point 128). Lossless both ways (|q| <= 127); the integer products
    ``(x - xz)(w - wz)`` and so the outputs are unchanged. Returns the number of layers converted."""
    from onnx import numpy_helper

    if weight_dtype not in WEIGHT_DTYPES:
        raise SigliteError(f"INT8 weight storage {weight_dtype!r}: choose one of {', '.join(WEIGHT_DTYPES)}")
    inits = {t.name: t for t in graph_model.graph.initializer}
    changed = 0
    for name, t in inits.items():
        if not name.endswith("_int8_w"):
            continue
        w, zp = numpy_helper.to_array(t), numpy_helper.to_array(inits[name + "zp"])
        if w.dtype == np.dtype(weight_dtype):
            continue
        signed = (w.astype(np.int16) - zp.astype(np.int16)).astype(np.int8)  # zp broadcasts over columns (N,)
        wq, wzp = _stored(signed, zp.shape, weight_dtype)
        t.CopyFrom(numpy_helper.from_array(wq, name))
        inits[name + "zp"].CopyFrom(numpy_helper.from_array(wzp, name + "zp"))
        changed += 1
    return changed
