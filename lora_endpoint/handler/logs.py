"""The handler's log lines: one JSON object per line (``LORA_LOG_FORMAT=json``, the default) or text.

JSON lines are what CloudWatch Logs Insights queries field by field (``level``, ``logger``, ``message``,
``exception``); an exception's traceback stays inside its one event instead of spreading over lines.
Only the ``lora_endpoint`` loggers are configured: the model server's own logging is left as it is.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO

from lora_endpoint.contract.settings import HandlerSettings

LOGGER = "lora_endpoint"
_HANDLER_NAME = "lora-endpoint"


class JsonFormatter(logging.Formatter):
    """A record as one JSON line: time (UTC, ISO 8601), level, logger, message, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False, default=str)


def configure(settings: HandlerSettings, stream: IO[str] | None = None) -> None:
    """Set the ``lora_endpoint`` loggers' level and format (again on every call: one handler, replaced)."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(settings.log_level)
    for old in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False  # one line per record, not a second copy through the root logger
