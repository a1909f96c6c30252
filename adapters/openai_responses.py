"""``responses: native``: an OpenAI-compatible server's own ``/v1/responses`` (vLLM, SGLang, OpenAI).

The same pooled pass-through as chat completions (``openai_compat``), posting to ``{api_base}/responses``
instead; replicas, retries and cooldowns come from ``replicas.py`` as for every remote backend. A
stream's events are yielded as their JSON payloads; it ends with the upstream's closing event
(``response.completed``, ``.incomplete`` or ``.failed``) or a ``[DONE]``, whichever it sends.
"""

from __future__ import annotations

from octogate.adapters.base import Backend
from octogate.adapters.openai_compat import OpenAICompatibleBackend
from octogate.adapters.replicas import ReplicaObserver, ReplicatedBackend
from octogate.core.backend_config import BackendConfig


class OpenAIResponsesBackend(OpenAICompatibleBackend):
    # a Responses stream ends with its last semantic event; [DONE] is optional
    END_MARKERS = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')

    def __init__(self, cfg: BackendConfig, label: str, api_base: str | None = None):
        super().__init__(cfg, label, api_base=api_base)
        self.url = f"{self.base_url}/responses"


def build_responses_backend(cfg: BackendConfig, label: str, observer: ReplicaObserver | None = None) -> Backend:
    """The backend that serves ``/v1/responses`` natively for a node whose backend says ``responses: native``."""
    from octogate.adapters import replica_address

    replicas = [(replica_address(cfg, written), OpenAIResponsesBackend(cfg, label, api_base=written))
                for written in cfg.api_bases]
    return ReplicatedBackend(cfg, label, replicas, observer)
