"""siglite classify: zero-shot sigmoid probabilities for images against labels."""

from .common import add_format_arg, add_model_args, emit, load_model


def register(sub):
    p = sub.add_parser("classify", help="zero-shot classify images (sigmoid probabilities)",
                       description="Score every image against every label independently (SigLIP's sigmoid).",
                       epilog='example: siglite classify cat.jpg --model google/siglip-base-patch16-224 '
                              '--labels cat dog "red car" --preprocess letterbox')
    p.add_argument("images", nargs="+", help="image files")
    add_model_args(p)
    p.add_argument("--labels", nargs="+", required=True, help="candidate labels")
    p.add_argument("--template", default="This is a photo of {}.", help='prompt template (default: "%(default)s")')
    p.add_argument("--preprocess", choices=["resize", "letterbox"], default="resize",
                   help="resize: the checkpoint's processor (default); letterbox: aspect-preserving, gray 127 padding")
    p.add_argument("--top", type=int, default=None, help="show only the K most probable labels per image")
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    model = load_model(args)
    probs = model.classify(args.images, args.labels, template=args.template, preprocess=args.preprocess)
    rows = []
    for path, p in zip(args.images, probs):
        order = p.argsort()[::-1][: args.top or len(args.labels)]
        rows += [{"image": path, "label": args.labels[j], "probability": float(p[j])} for j in order]
    emit(rows, args.format)
