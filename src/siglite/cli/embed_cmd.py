"""siglite embed: a folder, glob, list, WebDataset tars or parquet of images (or a file of texts) to sharded
embeddings; resumable."""

import argparse
import os

from ..tasks.embed import DEFAULT_SHARD_SIZE, DTYPES, embed
from .common import add_format_arg, add_layer_args, add_model_args, emit, layer_value, load_model

EPILOG = """examples:
  siglite embed photos/ --model google/siglip-base-patch16-224 --out emb/
  siglite embed 'shards/{00000..00099}.tar' --model M --out emb/ --dtype float16 --batch-size 64
  siglite embed images.parquet --column jpg --model M --out emb/
  siglite embed captions.txt --text --model M --out text_emb/
  siglite embed photos/ --model M --out emb/ --distributed ray     # RAY_ADDRESS, or a local cluster

Run the same command again after a crash or kill: only the missing shards are computed."""


def register(sub):
    p = sub.add_parser("embed", help="embed a folder / tars / parquet of images, or a text file, to sharded .npy",
                       description="Embed many images (or lines of text) into DIR/img_emb/part-NNNNN.npy with "
                                   "row-aligned DIR/metadata/part-NNNNN.parquet, a manifest and errors.jsonl.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="folder, glob, file of paths, .tar shard(s) ('a-{000..009}.tar'), .parquet, "
                               "or with --text a file of lines")
    add_model_args(p)
    p.add_argument("--out", "-o", required=True, help="output folder (new, or the same job's folder to resume)")
    p.add_argument("--text", action="store_true", help="SRC is a text file: embed each non-blank line")
    p.add_argument("--column", default=None, help="parquet column with image bytes or paths (default: guessed)")
    p.add_argument("--preprocess", choices=["resize", "letterbox"], default="resize",
                   help="resize: the checkpoint's processor (default); letterbox: aspect-preserving, gray padding")
    p.add_argument("--tokens", action="store_true", help="also write last_hidden_state (N, T, D) under DIR/tokens/")
    add_layer_args(p, "with --tokens: write the tokens")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written arrays")
    p.add_argument("--batch-size", type=int, default=None, help="engine batch size (default 32)")
    p.add_argument("--workers", type=int, default=None,
                   help="decode/preprocess threads (default: CPU count, at most 8; per actor with Ray)")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help="items per output part, the unit of resume (default %(default)s)")
    p.add_argument("--distributed", choices=["ray"], default=None, help="run the shards on a Ray cluster")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    model = load_model(args)
    # Ray actors may start in another working directory: hand them an absolute model path.
    name = os.path.abspath(args.model) if os.path.exists(args.model) else args.model
    load_args = {"name_or_path": name, "engine": args.engine, "dtype": args.precision,
                 "revision": args.revision, "device": args.device if args.device == "cpu" else None}
    record = embed(model, args.src, args.out, text=args.text, column=args.column, preprocess=args.preprocess,
                   tokens=args.tokens, dtype=args.dtype, shard_size=args.shard_size, batch_size=args.batch_size,
                   workers=args.workers, distributed=args.distributed, load_args=load_args,
                   progress=not args.no_progress, layer=layer_value(args), post_norm=args.post_norm)
    emit([record], args.format)
