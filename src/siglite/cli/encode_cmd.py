"""siglite encode: embeddings of images or texts to a .npy file."""

import numpy as np

from .common import add_format_arg, add_model_args, emit, load_model


def register(sub):
    p = sub.add_parser("encode", help="embed images or texts into a .npy file",
                       description="Embed images (pooler_output, or last_hidden_state with --tokens) or texts.",
                       epilog="examples:\n  siglite encode a.jpg b.jpg --model M --out img.npy\n"
                              "  siglite encode a.jpg --model M --out tokens.npy --tokens\n"
                              '  siglite encode --text "a cat" "a dog" --model M --out txt.npy')
    p.add_argument("images", nargs="*", help="image files")
    add_model_args(p)
    p.add_argument("--text", nargs="+", default=None, help="texts to embed instead of images")
    p.add_argument("--out", "-o", required=True, help="output .npy file")
    p.add_argument("--tokens", action="store_true", help="write last_hidden_state (N, T, D) instead of pooled (N, D)")
    p.add_argument("--preprocess", choices=["resize", "letterbox"], default="resize")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--normalize", action="store_true", help="L2-normalise pooled embeddings")
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    if bool(args.images) == bool(args.text):
        raise ValueError("give image files or --text, not both and not neither")
    model = load_model(args)
    if args.text:
        out = model.text_features(args.text, batch_size=args.batch_size)
    else:
        out = model.image_features(args.images, preprocess=args.preprocess, tokens=args.tokens,
                                   batch_size=args.batch_size)
    if isinstance(out, list):  # NaFlex tokens: (T_i, D) per image, T_i varying
        if len({t.shape for t in out}) > 1:
            raise ValueError("NaFlex token counts differ per image (native aspect ratio); encode them one image at "
                             "a time or use Model.image_features(tokens=True) in Python")
        out = np.stack(out)
    if args.normalize and not args.tokens:
        out = out / np.linalg.norm(out, axis=-1, keepdims=True)
    np.save(args.out, out)
    emit([{"out": args.out, "shape": list(out.shape), "dtype": str(out.dtype)}], args.format)
