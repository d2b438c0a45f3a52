"""OpenAI-compatible serving: ``dynroute serve`` (one model) and ``dynroute llm serve``
(a routing proxy in front of several OpenAI-compatible backends).

One module a job. Shared by both servers: ``schemas`` (request bodies), ``errors``
(OpenAI error JSON), ``parsing`` (a body read by hand, with the same errors), ``sse``
(server-sent event frames), ``runner`` (uvicorn). The model server: ``loading`` (a model
ready to serve), ``engine`` (micro-batched generation), ``stops`` (stop strings while
streaming), ``model_routes`` (its routes, one module each), ``app`` (``create_app``:
the routes put together), ``tiny`` (a tiny model for tests). The proxy: ``backends``
(config, prices), ``policy`` (which backend answers), ``decisions`` (the JSONL log),
``proxy_routes`` (its routes, forwarding and relaying), ``proxy``
(``create_proxy_app``). Both apps keep what their handlers share on ``app.state``.
Import the submodules you need; this package imports none of them (FastAPI and torch
load only when used).
"""
