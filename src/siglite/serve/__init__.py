"""`siglite serve`: an OpenAI-compatible embedding and zero-shot HTTP server.

app.py (routes, services, request flow), schemas.py (request/response bodies), batcher.py (dynamic batching across
requests), security.py (what an image string may point at: the URL guard), metrics.py (Prometheus), ray_app.py (the
same app as a Ray Serve deployment). Needs the `serve` extra (FastAPI, uvicorn); imported only by `siglite serve`.
"""
