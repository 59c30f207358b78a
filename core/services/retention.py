"""How long the de-identified images are kept: ``BTD_IMAGE_RETENTION_DAYS`` (default 90), purged by an admin (the
Accounts page) or by the server's scheduler (``python -m core images purge``). Results stay; a result whose image
is gone opens without it. Every purge is an audit event."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from core.services import audit
from core.services.access import DELETE_IMAGES, Actor, require
from core.storage.images import ImageStore
from core.storage.protocol import Store

DEFAULT_RETENTION_DAYS = 90


def retention_days() -> int:
    value = os.environ.get("BTD_IMAGE_RETENTION_DAYS", "")
    return int(value) if value.strip().isdigit() and 1 <= int(value) <= 36_500 else DEFAULT_RETENTION_DAYS


def purge_images(store: Store, images: ImageStore, actor: Actor, days: int | None = None) -> int:
    """Delete the images stored more than ``days`` (at least 1; default: the retention period) ago; returns how
    many. The audit event is written first: a purge that cannot be audited deletes nothing."""
    require(actor, DELETE_IMAGES)
    keep = retention_days() if days is None else days
    if keep < 1:
        raise ValueError(f"Images are kept at least 1 day (asked: {keep}); today's may not be reviewed yet.")
    cutoff = datetime.now(UTC) - timedelta(days=keep)
    expired = images.expired(cutoff)
    audit.record(store, actor, "images_purged", None, older_than_days=keep, deleted=len(expired))  # at most
    return sum(images.delete(key, stored_before=cutoff) for key in expired)  # saved again meanwhile: kept
