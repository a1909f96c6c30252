"""GET /v1/models and /v1/models/{id}: every node of the graph (and its router and agents), as OpenAI model objects.

The listing never changes while a process runs, so its JSON is rendered once at start-up.
"""

from __future__ import annotations

import time

import orjson
from starlette.responses import Response

from octogate.core.errors import OpenAIError
from octogate.core.protocol import ModelCard, ModelList
from octogate.gateway.nodes import NodeTable


class ModelsService:
    def __init__(self, nodes: NodeTable, router_name: str | None = None):
        created = int(time.time())
        self.cards = {} if router_name is None else {router_name: ModelCard(
            id=router_name, created=created,
            description="Routes each request to the best node with a functional-token router (Octopus v4).",
        )}
        self.cards |= {
            node.name: ModelCard(
                id=node.name, created=created, description=node.description or None,
                functional_token=node.functional_token, backend=node.backend_config.model,
            )
            for node in nodes.nodes.values()
        }
        self.cards |= {name: ModelCard(id=name, created=created, description=agent.cfg.description)
                       for name, agent in nodes.agents.agents.items()}
        self._list_body = ModelList(data=list(self.cards.values())).model_dump_json(exclude_none=True).encode()
        self._card_bodies = {k: orjson.dumps(c.model_dump(exclude_none=True)) for k, c in self.cards.items()}

    def list(self) -> Response:
        return Response(self._list_body, media_type="application/json")

    def get(self, model_id: str) -> Response:
        body = self._card_bodies.get(model_id)
        if body is None:
            raise OpenAIError(404, f"The model '{model_id}' does not exist here.", param="model", code="model_not_found")
        return Response(body, media_type="application/json")
