"""siglite search: exact top-k over the output of `siglite embed`, by a text or an image."""

from ..tasks.search import search
from .common import add_format_arg, add_model_args, emit, load_model


def register(sub):
    p = sub.add_parser("search", help="nearest stored embeddings to a text or image query",
                       description="Exact top-k (cosine, plus SigLIP's sigmoid probability across modalities) over "
                                   "an embed output folder, memory-mapped.",
                       epilog='examples:\n  siglite search emb/ "a red car" --model M --top 10\n'
                              '  siglite search emb/ --image query.jpg --model M')
    p.add_argument("dir", help="output folder of `siglite embed`")
    p.add_argument("query", nargs="?", default=None, help="text query")
    p.add_argument("--image", default=None, help="image file to use as the query instead of a text")
    add_model_args(p)
    p.add_argument("--top", type=int, default=10, help="number of results (default %(default)s)")
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    if (args.query is None) == (args.image is None):
        raise ValueError("give a text query or --image, not both and not neither")
    model = load_model(args)
    emit(search(model, args.dir, text=args.query, image=args.image, top=args.top), args.format)
