"""OpenAI-compatible serving: ``dynroute serve`` (one model) and ``dynroute llm serve``
(a routing proxy in front of several OpenAI-compatible backends).

One module a job: ``schemas`` (request bodies), ``errors`` (OpenAI error JSON),
``loading`` (a model ready to serve), ``engine`` (micro-batched generation), ``stops``
(stop strings while streaming), ``app`` (the model server's routes), ``runner``
(uvicorn), ``tiny`` (a tiny model for tests); the proxy: ``backends`` (config, prices),
``policy`` (which backend answers), ``decisions`` (the JSONL log), ``proxy`` (its routes).
Import the submodules you need; this package imports none of them (FastAPI and torch
load only when used).
"""
