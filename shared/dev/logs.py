"""Log set-up for the dev processes (one line per event, kafka-python's chatter kept quiet)."""
from __future__ import annotations

import logging
import os


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # kafka-python logs every connection and metadata refresh at INFO.
    logging.getLogger("kafka").setLevel(os.environ.get("KAFKA_LOG_LEVEL", "WARNING"))
