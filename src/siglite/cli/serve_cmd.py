"""siglite serve: an OpenAI-compatible embedding and zero-shot server (FastAPI + uvicorn, or Ray Serve)."""

import argparse
import os

from ..errors import SigliteError
from .common import add_max_num_patches_arg

EPILOG = """examples:
  siglite serve --model google/siglip-base-patch16-224 --port 8000
  siglite serve --model ./a --model ./b --max-batch-size 64 --max-wait-ms 10 --api-key $KEY
  siglite serve --model M --distributed ray --replicas 2          # Ray Serve (RAY_ADDRESS, or a local cluster)

  curl -s localhost:8000/v1/embeddings -H 'Content-Type: application/json' \\
       -d '{"model": "M", "input": ["a red car"]}'

Image URLs are never fetched unless --allow-url-domain names their domain; file paths are always refused."""


def register(sub):
    p = sub.add_parser("serve", help="serve embeddings and zero-shot classification over HTTP (OpenAI-compatible)",
                       description="POST /v1/embeddings (text or image), /v1/classify; GET /v1/models, /health/live, "
                                   "/health/ready, /metrics. Batches items across requests.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "-m", action="append", required=True,
                   help="checkpoint folder, hub id or `siglite list` name; repeat to serve several (NAME=PATH sets "
                        "the name clients use; default: the argument itself)")
    p.add_argument("--engine", default=None, help="torch, cuda, onnxruntime, openvino (default: the folder's own)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", default=None, help="engine precision (see siglite classify --help)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=32, help="items per engine batch (default %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="longest wait for a batch to fill (default %(default)s)")
    p.add_argument("--max-queue", type=int, default=1024,
                   help="items admitted per model and modality; beyond: 429 (default %(default)s)")
    p.add_argument("--max-items", type=int, default=256, help="inputs per request (default %(default)s)")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="request body limit, MB (default %(default)s)")
    p.add_argument("--max-image-mb", type=float, default=16.0, help="encoded bytes per image, MB (default %(default)s)")
    p.add_argument("--max-image-pixels", type=int, default=50_000_000,
                   help="width x height per image, checked before decoding (default %(default)s)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request deadline in s; beyond: 504")
    p.add_argument("--workers", type=int, default=None, help="decode/preprocess threads (default: CPUs, at most 4)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for the engine (default: torch's choice; decode threads come on top)")
    p.add_argument("--preprocess", choices=["resize", "letterbox"], default="resize")
    add_max_num_patches_arg(p, "SigLIP 2 NaFlex models among --model: the patch budget per image (default: an "
                               "exported folder's, else the checkpoint's); an error when none is NaFlex")
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY (default: env SIGLITE_API_KEY)")
    p.add_argument("--cors-origin", action="append", default=[], help="allow browser calls from this origin")
    p.add_argument("--allow-url-domain", action="append", default=[],
                   help="fetch image URLs of this domain and its subdomains (public addresses only); repeatable")
    p.add_argument("--distributed", choices=["ray"], default=None, help="run as a Ray Serve deployment")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (default %(default)s)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=run)


def settings_from_args(args):
    from ..serve.app import ServeSettings

    s = ServeSettings(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                      max_items=args.max_items, max_body_bytes=int(args.max_body_mb * 2**20),
                      max_image_bytes=int(args.max_image_mb * 2**20), max_image_pixels=args.max_image_pixels,
                      request_timeout_s=args.timeout, preprocess=args.preprocess,
                      api_key=args.api_key or os.environ.get("SIGLITE_API_KEY") or None,
                      cors_origins=args.cors_origin, allow_url_domains=args.allow_url_domain)
    if args.workers:
        s.workers = args.workers
    for name in ("max_batch_size", "max_queue", "max_items", "max_image_pixels"):
        if getattr(s, name) < 1:
            raise SigliteError(f"--{name.replace('_', '-')} must be >= 1")
    if s.max_wait_ms < 0 or s.request_timeout_s <= 0:
        raise SigliteError("--max-wait-ms must be >= 0 and --timeout > 0")
    return s


def model_specs(args) -> dict[str, str]:
    specs = {}
    for m in args.model:
        name, sep, path = m.partition("=")
        name, path = (name, path) if sep and path else (m, m)
        if name in specs:
            raise SigliteError(f"--model {name!r} given twice")
        specs[name] = path
    return specs


def run(args):
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise SigliteError(f"siglite serve needs FastAPI and uvicorn: pip install 'siglite[serve]' ({e})") from e
    settings = settings_from_args(args)
    specs = model_specs(args)
    load_args = {"engine": args.engine, "device": args.device, "dtype": args.precision}
    if args.distributed == "ray":
        if args.max_num_patches is not None:
            raise SigliteError("--max-num-patches is not passed to Ray Serve replicas yet; serve without --distributed")
        try:
            import ray.serve  # noqa: F401
        except ImportError as e:
            raise SigliteError(f"--distributed ray needs Ray Serve: pip install 'ray[serve]' ({e})") from e
        from ..serve.ray_app import run_ray

        return run_ray(specs, load_args, settings, host=args.host, port=args.port, replicas=args.replicas)
    import siglite
    from ..serve.app import run_server

    if args.threads is not None:
        if args.threads < 1:
            raise SigliteError("--threads must be >= 1")
        import torch

        torch.set_num_threads(args.threads)

    models = {name: siglite.load(path, **load_args) for name, path in specs.items()}
    if args.max_num_patches is not None:
        from ..preprocess.naflex import NaflexConfig

        naflex_models = [m for m in models.values() if isinstance(m.image_config, NaflexConfig)]
        if not naflex_models:
            raise SigliteError("--max-num-patches applies to SigLIP 2 NaFlex models; none of --model is one")
        for m in naflex_models:
            m.set_patch_budget(args.max_num_patches)
    return run_server(models, settings, host=args.host, port=args.port, log_level=args.log_level)
