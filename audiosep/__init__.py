"""audiosep: efficient speech separation and recognition on PyTorch and Lightning."""

import logging

__version__ = "0.1.0"


class _NoAdvertisements(logging.Filter):
    """Drops Lightning's "Tip: ... install litlogger" line (Lightning 2.6 prints it in every Trainer: fit, demo,
    norm study, prune): an advertisement that tells our users nothing about their run. By logger name: Lightning
    is not imported for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdvertisements())
