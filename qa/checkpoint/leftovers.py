"""A run's own unpublished objects in the store: what an interrupted upload (a crash, a kill, an outage, a part
that never came) left under ``<run>/checkpoints/step_N/`` without a manifest. Readers never see them (no
manifest), but nothing else would ever delete them: rotation only knows checkpoints that have a manifest.

They are collected on the node of rank 0, on its uploader's thread, right after a checkpoint's manifest landed:
every checkpoint older than that one without a manifest is garbage by then. Its parts were uploaded by every
node, and each node uploads its checkpoints in order, so no node is still writing an older one. Newer prefixes
are left alone: another node may be uploading them at this very moment. At the end of a run, once every node's
uploads are over, all of them go (the last checkpoint's interrupted upload has no later one to collect it)."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable

from qa.checkpoint.manifest import MANIFEST_NAME
from qa.checkpoint.state import step_of
from qa.checkpoint.store import Store

logger = logging.getLogger(__name__)


def unpublished_before(keys: Iterable[str], prefix: str, published: str | None,
                       keep: Collection[str] = ()) -> list[str]:
    """Checkpoint names under ``prefix`` (keys relative to the store) with objects but no manifest, older than
    the just published checkpoint ``published`` (None: all of them, once no node uploads any more), except
    ``keep``; oldest first."""
    bound = float("inf") if published is None else step_of(published)
    if bound is None:
        return []
    start = len(prefix.rstrip("/")) + 1
    seen: dict[str, bool] = {}
    for key in keys:
        name, _, rest = key[start:].partition("/")
        seen[name] = seen.get(name, False) or rest == MANIFEST_NAME
    steps = {name: step for name, done in seen.items() if not done and (step := step_of(name)) is not None}
    return sorted((n for n, s in steps.items() if s < bound and n not in keep), key=steps.__getitem__)


def collect_unpublished(store: Store, prefix: str, published: str | None) -> list[str]:
    """Delete this run's unpublished checkpoints older than ``published`` (None: all); returns their names."""
    names = unpublished_before(store.list_keys(prefix), prefix, published)
    for name in names:
        count = store.delete_prefix(f"{prefix}/{name}")
        logger.info("deleted %d object(s) of the unpublished %s (an interrupted upload)", count,
                    store.uri_for(f"{prefix}/{name}"))
    return names
