"""How long the de-identified images are kept: ``BTD_IMAGE_RETENTION_DAYS`` (default 90), purged by an admin (the
Accounts page) or by the server's scheduler (``python -m core images purge``). Results stay; a result whose image
is gone opens without it. The image of a result nobody has reviewed yet is kept until it is (the purge deleted the
worklist's oldest unread cases, which were then agreed with unseen). Every purge is an audit event."""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from core.errors import ConfigError, StoreError, StoreUnavailable
from core.services import audit
from core.services.access import DELETE_IMAGES, Actor, require
from core.storage.images import ImageStore
from core.storage.protocol import Store

DEFAULT_RETENTION_DAYS = 90
MAX_RETENTION_DAYS = 36_500


def retention_days() -> int:
    """The configured retention period in days (default 90 when unset). A setting that is not a whole number of
    days from 1 to 36,500 ("180d", "1y", "0") is a ValueError naming it: read as the default, a scheduled purge
    deleted images the site meant to keep, irreversibly."""
    value = os.environ.get("BTD_IMAGE_RETENTION_DAYS", "").strip()
    if not value:
        return DEFAULT_RETENTION_DAYS
    if not value.isdigit() or not 1 <= int(value) <= MAX_RETENTION_DAYS:
        raise ConfigError(
            f"BTD_IMAGE_RETENTION_DAYS is {value[:20]!r}; it must be a whole number of days from 1 to "
            f"{MAX_RETENTION_DAYS:,}"
        )
    return int(value)


@dataclass(frozen=True)
class Purged:
    """What a purge did: images deleted, and images past the period kept because their results are not reviewed."""

    deleted: int
    kept_unread: int


def purge_images(store: Store, images: ImageStore, actor: Actor, days: int | None = None) -> Purged:
    """Delete the images stored more than ``days`` (at least 1; default: the retention period) ago, but those of
    results not yet reviewed (counted). The audit event is written first: a purge that cannot be audited deletes
    nothing."""
    require(actor, DELETE_IMAGES)
    keep = retention_days() if days is None else days
    if keep < 1:
        raise ValueError(f"Images are kept at least 1 day (asked: {keep}); today's may not be reviewed yet.")
    with images.purging():  # one at a time: two at once each claimed every deletion in the trail
        cutoff = datetime.now(UTC) - timedelta(days=keep)
        old, unread = images.expired(cutoff), store.unread_image_keys()
        expired = [key for key in old if key not in unread]
        audit.record(  # at most: an image saved again meanwhile is kept
            store,
            actor,
            "images_purged",
            None,
            older_than_days=keep,
            deleted=len(expired),
            kept_unread=len(old) - len(expired),
        )
        deleted = 0
        try:
            for key in expired:
                deleted += images.delete(key, stored_before=cutoff)  # saved again meanwhile: kept
            images.sweep(datetime.now(UTC) - timedelta(hours=1))  # pieces an interrupted deletion left behind
        except (StoreError, OSError) as error:  # the event said they were deleted: the trail says how far it went (a
            # read-only image folder kept them all under "images_purged, deleted: 7")
            failed = error if isinstance(error, StoreError) else StoreUnavailable("The image store cannot be changed.")
            with suppress(StoreError):
                audit.record(store, actor, "images_purge_failed", None, deleted=deleted, code=failed.code)
            if failed is error:
                raise
            raise failed from error
        return Purged(deleted, len(old) - len(expired))
