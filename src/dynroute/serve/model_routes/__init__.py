"""The routes of ``dynroute serve`` (one model), one module a concern.

``health`` (``GET /health``), ``models`` (``GET /v1/models``), ``completions``
(``POST /v1/completions``), ``chat`` (``POST /v1/chat/completions``), each an
``APIRouter`` named ``router``; ``generation`` (a request → an engine job, run or
streamed) and ``state`` (what the handlers read from ``request.app.state``) serve them.
:func:`dynroute.serve.app.create_app` puts them together.
"""
