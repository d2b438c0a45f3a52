"""The routes of ``dynroute llm serve`` (the routing proxy), one module a concern.

``health`` (``GET /health``), ``models`` (``GET /v1/models``), ``completions``
(``POST /v1/completions``), ``chat`` (``POST /v1/chat/completions``), each an
``APIRouter`` named ``router``. Behind the two POST routes: ``forward`` (decide, then try
the backends in order), ``relay`` (pass an answer or a stream back), ``exchange`` (one
request's decision and decision-log row) and ``state`` (what the handlers read from
``request.app.state``). :func:`dynroute.serve.proxy.create_proxy_app` puts them together.
"""
