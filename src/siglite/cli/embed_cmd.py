"""siglite embed: a folder, glob, list, WebDataset tars or parquet of images (or a file of texts) to sharded
embeddings; resumable and incremental."""

import argparse
import os

from .common import add_batch_size_arg, add_format_arg, add_layer_args, add_max_num_patches_arg, add_model_args, \
    add_quiet_arg, emit, layer_value, \
    load_model, positive_int, warn

# Spelled here so that `siglite --help` stays light (tests check them against siglite.tasks.embed).
DTYPES = ("float32", "float16")
DEFAULT_SHARD_SIZE = 10_000

EPILOG = """examples:
  siglite embed photos/ --model google/siglip-base-patch16-224 --out emb/
  siglite embed 'shards/{00000..00099}.tar' --model M --out emb/ --dtype float16 --batch-size 64
  siglite embed images.parquet --column jpg --model M --out emb/ --normalize
  siglite embed captions.txt --text --model M --out text_emb/
  siglite embed photos/ --model M --out emb/ --distributed ray     # RAY_ADDRESS, or a local cluster

Run the same command again after a crash or Ctrl-C: only the missing shards are computed. Run it again after adding
images to SRC: only the new ones are embedded, into new shards (inputs gone from SRC are reported; their rows stay).
Either way the settings (model, engine, precision, --preprocess, --dtype, --shard-size, --normalize, --tokens) must
be the same."""


def register(sub):
    p = sub.add_parser("embed", help="embed a folder / tars / parquet of images, or a text file, to sharded .npy",
                       description="Embed many images (or lines of text) into DIR/img_emb/part-NNNNN.npy with "
                                   "row-aligned DIR/metadata/part-NNNNN.parquet, a manifest and errors.jsonl.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="folder, glob, file of paths, .tar shard(s) ('a-{000..009}.tar'), .parquet, "
                               "or with --text a file of lines")
    add_model_args(p)
    p.add_argument("--out", "-o", required=True,
                   help="output folder (new, or the same job's folder to resume or add new inputs)")
    p.add_argument("--text", action="store_true", help="SRC is a text file: embed each non-blank line")
    p.add_argument("--column", default=None, help="parquet column with image bytes or paths (default: guessed)")
    p.add_argument("--preprocess", choices=["resize", "letterbox"], default="resize",
                   help="resize: the checkpoint's processor (default); letterbox: aspect-preserving, gray padding")
    p.add_argument("--tokens", action="store_true", help="also write last_hidden_state (N, T, D) under DIR/tokens/")
    p.add_argument("--normalize", action="store_true",
                   help="write unit-length (L2-normalised) pooled rows, as vector indexes expect; the manifest "
                        "records \"normalized\"")
    add_layer_args(p, "with --tokens: write the tokens")
    add_max_num_patches_arg(p)
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written arrays")
    add_batch_size_arg(p, help="engine batch size (default 32)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="decode/preprocess threads (default: CPU count, at most 8; per actor with Ray)")
    p.add_argument("--shard-size", type=positive_int, default=DEFAULT_SHARD_SIZE,
                   help="items per output part, the unit of resume (default %(default)s)")
    p.add_argument("--distributed", choices=["ray"], default=None, help="run the shards on a Ray cluster")
    add_quiet_arg(p)
    p.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)  # old name of --quiet
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    from ..errors import SigliteError
    from ..tasks.embed import EmbedInterrupted, embed

    model = load_model(args)
    # Ray actors may start in another working directory: hand them an absolute model path.
    name = os.path.abspath(args.model) if os.path.exists(args.model) else args.model
    load_args = {"name_or_path": name, "engine": args.engine, "dtype": args.precision,
                 "revision": args.revision, "device": args.device if args.device == "cpu" else None,
                 "max_num_patches": args.max_num_patches}
    try:
        record = embed(model, args.src, args.out, text=args.text, column=args.column, preprocess=args.preprocess,
                       tokens=args.tokens, normalize=args.normalize, dtype=args.dtype, shard_size=args.shard_size,
                       batch_size=args.batch_size, workers=args.workers, distributed=args.distributed,
                       load_args=load_args, progress=not args.quiet,
                       layer=layer_value(args), post_norm=args.post_norm)
    except EmbedInterrupted as e:
        args.interrupt_hint = (f"{e.done}/{e.total} shards are on disk in {e.out}; run the same command again to "
                               f"finish (only the missing shards are computed)")
        raise
    if record["removed"]:
        shown = ", ".join(record["removed_keys"])
        warn(args, f"{record['removed']} input(s) embedded earlier are no longer in {args.src} (e.g. {shown}); "
                   f"their rows stay in {args.out} (embed into a new folder to drop them)")
    if record["errors"]:
        warn(args, f"{record['errors']} input(s) could not be read; see {os.path.join(args.out, 'errors.jsonl')}")
    if record["embedded"] == 0:
        raise SigliteError(f"no input could be embedded ({record['errors']} errors; see "
                           f"{os.path.join(args.out, 'errors.jsonl')})")
    record.pop("removed_keys")
    emit([record], args.format)
