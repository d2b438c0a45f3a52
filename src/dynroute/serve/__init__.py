"""OpenAI-compatible serving: ``dynroute serve`` (one model) and ``dynroute llm serve``
(a routing proxy in front of several OpenAI-compatible backends); see docs/serving.md.

Both use ``schemas`` (the wire format), ``errors``, ``state`` (``app.state``, and the
``/health`` and ``/v1/models`` routes) and ``runner``. The model server: ``app``, its
``model_routes``, ``engine`` (micro-batching), ``stops``, ``loading``, ``tiny`` (a model
for tests). The proxy: ``proxy``, its ``proxy_routes``, ``policy`` (which backend
answers), ``backends``, ``decisions`` (the log). Import the submodules you need; this
package imports none of them (FastAPI and torch load only when used).
"""
