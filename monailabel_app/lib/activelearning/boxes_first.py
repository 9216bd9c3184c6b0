"""Next-sample strategy ``boxes_first``: an image nobody has annotated yet (no ``boxes`` label), at random
so that annotators working at once rarely get the same one. An image whose boxes label is an empty list
was read and found normal: it counts as annotated."""

from __future__ import annotations

import random

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.datastore import BOX_TAG


class ImagesWithoutBoxesFirst(Strategy):
    def __init__(self) -> None:
        super().__init__("An image without abnormality boxes yet; once all have them, any image")

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        images = sorted(datastore.list_images())
        pending = [i for i in images if not datastore.get_label_by_image_id(i, BOX_TAG)]
        pool = pending or images
        if not pool:
            return {}
        return {"id": random.choice(pool), "pending": len(pending)}
