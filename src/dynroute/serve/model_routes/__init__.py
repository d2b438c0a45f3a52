"""The generation routes of ``dynroute serve``: ``completions`` (``POST /v1/completions``)
and ``chat`` (``POST /v1/chat/completions``), each an ``APIRouter`` named ``router``, over
``generation`` (a request → an engine job, run or streamed)."""
