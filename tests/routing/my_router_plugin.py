"""A router added the way a user would: one module, nothing else edited.

Imported by tests/routing/test_custom_router.py, and by CLI subprocesses through
DYNROUTE_PLUGINS=my_router_plugin.
"""

from dataclasses import dataclass

from dynroute.routing import Router, register_router, top_k


@register_router("my_router")
@dataclass(frozen=True)
class MyRouter(Router):
    k: int = 2

    def __call__(self, logits):
        return top_k(logits, self.k)
