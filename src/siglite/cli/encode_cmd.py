"""siglite encode: embeddings of images or texts to a .npy file, with the list of what each row is beside it."""

import argparse

from .common import (add_batch_size_arg, add_format_arg, add_layer_args, add_max_num_patches_arg, add_model_args,
                     add_overwrite_arg, add_quiet_arg,
                     emit, layer_value, load_model, progress_bar, warn)

EPILOG = """examples:
  siglite encode a.jpg b.jpg --model M --out img.npy
  siglite encode a.jpg --model M --out tokens.npy --tokens
  siglite encode --text "a cat" "a dog" --model M --out txt.npy
  siglite encode photos/*.jpg --model M --out img.npy --skip-bad --normalize

Writes OUT (".npy" is added when missing, as numpy does) and OUT's stem + ".sources.txt": the image path (or the
text) of each row, one per line, so rows can be matched to inputs also when --skip-bad left some out."""


def register(sub):
    p = sub.add_parser("encode", help="embed images or texts into a .npy file",
                       description="Embed images (pooler_output, or last_hidden_state with --tokens) or texts.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", help="image files")
    add_model_args(p)
    p.add_argument("--text", nargs="+", default=None, help="texts to embed instead of images")
    p.add_argument("--out", "-o", required=True, help="output .npy file")
    p.add_argument("--tokens", action="store_true", help="write last_hidden_state (N, T, D) instead of pooled (N, D)")
    add_layer_args(p, "with --tokens: write the tokens")
    p.add_argument("--preprocess", choices=["resize", "letterbox"], default="resize")
    add_max_num_patches_arg(p)
    add_batch_size_arg(p)
    p.add_argument("--normalize", action="store_true", help="L2-normalise pooled embeddings")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip images that cannot be decoded (reported on stderr; see OUT.sources.txt) instead of "
                        "stopping")
    add_overwrite_arg(p, "output file")
    add_quiet_arg(p)
    add_format_arg(p)
    p.set_defaults(run=run)


def output_paths(out: str) -> tuple[str, str]:
    """(array path, sources path): np.save's naming, made explicit so the path reported is the path written."""
    array = out if out.endswith(".npy") else out + ".npy"
    return array, array[: -len(".npy")] + ".sources.txt"


def run(args):
    import numpy as np

    from ..errors import SigliteError
    from ..fileio import check_output_file, write_npy, write_text

    if bool(args.images) == bool(args.text):
        raise SigliteError("give image files or --text, not both and not neither")
    if args.text and args.skip_bad:
        raise SigliteError("--skip-bad applies to images, not to --text")
    array_path, sources_path = output_paths(args.out)
    for path in (array_path, sources_path):
        check_output_file(path, overwrite=args.overwrite)
    model = load_model(args)
    failures = []
    if args.text:
        with progress_bar(args, len(args.text), "encode", "text") as bar:
            out = model.text_features(args.text, batch_size=args.batch_size, progress=bar)
        sources = args.text
    else:
        with progress_bar(args, len(args.images), "encode", "img") as bar:
            batch = model.encode_images(args.images, preprocess=args.preprocess, tokens=args.tokens,
                                        batch_size=args.batch_size, on_error="skip" if args.skip_bad else "raise",
                                        layer=layer_value(args), post_norm=args.post_norm, progress=bar)
        failures = batch.failures
        for _, reason in failures:
            warn(args, f"skipped {reason}")
        if not batch.indices:
            raise SigliteError(f"none of the {len(args.images)} images could be decoded; nothing written")
        out = batch.tokens if args.tokens else batch.features
        sources = [args.images[i] for i in batch.indices]
    if isinstance(out, list):  # NaFlex tokens: (T_i, D) per image, T_i varying
        if len({t.shape for t in out}) > 1:
            raise ValueError("NaFlex token counts differ per image (native aspect ratio); encode them one image at "
                             "a time or use Model.image_features(tokens=True) in Python")
        out = np.stack(out)
    if args.normalize and not args.tokens:
        out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    write_npy(array_path, out)
    # one row per line: a newline inside a text would shift every later line, so it is written as \n
    write_text(sources_path, "".join(s.replace("\\", "\\\\").replace("\n", "\\n") + "\n" for s in map(str, sources)))
    emit([{"out": array_path, "shape": list(out.shape), "dtype": str(out.dtype), "sources": sources_path,
           "skipped": len(failures)}], args.format)
