"""siglite heatmap: where the vision tower's tokens are strong, or which regions support a text, as a PNG."""

import argparse

from .common import add_format_arg, add_model_args, add_overwrite_arg, check_out_file, emit, load_model

MODES = ("norm", "mean", "attention")  # spelled here so `--help` imports no torch (tests check tasks.heatmap.MODES)


def register(sub):
    p = sub.add_parser("heatmap", help="patch heatmap of an image (token norm, or support for a --text) as a PNG",
                       description="Draw the patch grid as a heatmap over the image. Without --text: the per-patch "
                                   "token norm (or --mode mean / attention). With --text: the drop in image-text "
                                   "cosine when each region is greyed out (positive = supports the text).",
                       epilog='examples:\n  siglite heatmap cat.jpg --model M --out map.png\n'
                              '  siglite heatmap street.jpg --model M --text "a red car" --out car.png\n'
                              '  siglite heatmap cat.jpg --model M --mode mean --layer -2 --out map.png --npy map.npy',
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="image file")
    add_model_args(p)
    p.add_argument("--text", default=None, help="show which regions support this text")
    p.add_argument("--mode", choices=MODES, default="norm", help="without --text: per-patch statistic (default: norm)")
    p.add_argument("--layer", type=int, default=None, help="without --text: read hidden_states[K] (default: last)")
    p.add_argument("--post-norm", action="store_true", help="with --layer: apply the final LayerNorm")
    p.add_argument("--window", type=int, default=None, help="with --text: occlusion window in patches")
    p.add_argument("--stride", type=int, default=None, help="with --text: occlusion stride in patches")
    p.add_argument("--preprocess", choices=["resize", "letterbox"], default="resize")
    p.add_argument("--out", "-o", required=True, help="output PNG")
    p.add_argument("--npy", default=None, help="also save the (grid, grid) array as .npy")
    add_overwrite_arg(p, "--out / --npy file")
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    import numpy as np

    from ..tasks.heatmap import describe, patch_heatmap, save_heatmap_png

    check_out_file(args, args.out)  # before the work
    check_out_file(args, args.npy, "--npy")
    model = load_model(args)
    heat = patch_heatmap(model, args.image, args.text, mode=args.mode, layer=args.layer, post_norm=args.post_norm,
                         window=args.window, stride=args.stride, preprocess=args.preprocess)
    save_heatmap_png(model, args.image, heat, args.out, title=describe(args.text, args.mode, args.layer),
                     preprocess=args.preprocess,
                     label="cosine drop (higher: supports the text)" if args.text is not None else "")
    if args.npy:
        np.save(args.npy, heat)
    r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
    emit([{"out": args.out, "grid": f"{heat.shape[0]}x{heat.shape[1]}", "min": float(heat.min()),
           "max": float(heat.max()), "hottest_patch": f"row {r}, col {c}"}], args.format)
