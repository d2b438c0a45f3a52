"""The generation routes of ``dynroute llm serve`` (the routing proxy): ``forward`` (its
``APIRouter`` ``router``: ``POST /v1/completions`` and ``/v1/chat/completions``, decided,
then tried on the backends in order), ``relay`` (an answer or a stream passed back) and
``exchange`` (one request's decision and decision-log row)."""
