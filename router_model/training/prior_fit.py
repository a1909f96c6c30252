"""``octogate router prior``: write a router's prior correction from the node mix of its training data."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from octogate.router_model.artifact import RouterArtifact, load_router, write_manifest
from octogate.router_model.prior import PriorError, prior_block, train_shares


def set_prior(router: str | Path, labels: Iterable[str] | None, *, target: str = "uniform", tau: float = 1.0,
              data: str | None = None) -> RouterArtifact:
    """Write (or, with ``tau == 0``, remove) the prior correction of the router at ``router``, from
    the node ``labels`` of its training data; returns the reloaded artifact."""
    artifact = load_router(router)
    manifest = {k: v for k, v in artifact.manifest.items() if k != "prior"}
    if tau != 0:
        if labels is None:
            raise PriorError("a prior correction needs the router's training data")
        manifest["prior"] = prior_block(train_shares(artifact.tokens.values(), labels), target=target, tau=tau, data=data)
    write_manifest(router, manifest)
    return load_router(router)
