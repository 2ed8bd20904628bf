"""siglite search: exact top-k over the output of `siglite embed`, by a text or an image."""

import argparse

from .common import add_format_arg, add_model_args, emit, load_model, positive_int, warn

EPILOG = """examples:
  siglite search emb/ "a red car" --top 10
  siglite search emb/ --image query.jpg
  siglite search emb/ "a red car" --model M-onnx --engine onnxruntime

The model defaults to the one the manifest names (its folder, engine and precision). An unfinished output (an embed
still running, or interrupted) is refused: finish it first, or pass --partial to search the finished shards only."""


def register(sub):
    p = sub.add_parser("search", help="nearest stored embeddings to a text or image query",
                       description="Exact top-k (cosine, plus SigLIP's sigmoid probability across modalities) over "
                                   "an embed output folder, memory-mapped.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="output folder of `siglite embed`")
    p.add_argument("query", nargs="?", default=None, help="text query")
    p.add_argument("--image", default=None, help="image file to use as the query instead of a text")
    add_model_args(p, required=False)
    p.add_argument("--top", type=positive_int, default=10, help="number of results (default %(default)s)")
    p.add_argument("--partial", action="store_true",
                   help="search an unfinished output's finished shards (with a warning) instead of refusing")
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    import siglite

    from ..errors import SigliteError
    from ..tasks.embed.store import load_args, open_store
    from ..tasks.search import search

    if (args.query is None) == (args.image is None):
        raise SigliteError("give a text query or --image, not both and not neither")
    store = open_store(args.dir, partial=args.partial)
    if not store.complete:
        warn(args, f"{args.dir} is unfinished: searching {len(store.parts)} of {store.shards} shards")
    if args.model:
        model = load_model(args)
    else:
        kw = load_args(store.manifest)
        model = siglite.load(kw.pop("name_or_path"), device=args.device, revision=args.revision,
                             **{k: v for k, v in kw.items() if v is not None})
    emit(search(model, args.dir, text=args.query, image=args.image, top=args.top, partial=args.partial), args.format)
