"""The embedded Ray that `start_ray` starts without a dashboard: every worker drops Ray Train's once-a-second
state-API warning (the state API needs the dashboard), and only that warning."""
from __future__ import annotations

import logging

import pytest
import ray

from qbr_dist.config import RuntimeConfig
from qbr_dist.train.ray_logs import PG_CLEANER_LOGGER, STATE_API_WARNING
from qbr_dist.train.runtime import start_ray

pytestmark = pytest.mark.integration

MESSAGES = (f"Failed to query Ray Train Controller actor state. {STATE_API_WARNING}. Continuing to monitor.",
            "Controller actor died but placement group already removed; skipping cleanup.")


@ray.remote(num_cpus=0)
def kept_by_the_cleaner_logger() -> list[bool]:
    logger = logging.getLogger(PG_CLEANER_LOGGER)
    return [bool(logger.filter(logger.makeRecord(logger.name, logging.WARNING, __file__, 0, message, None, None)))
            for message in MESSAGES]


def test_workers_drop_only_the_state_api_warning_when_there_is_no_dashboard():
    assert not ray.is_initialized()
    start_ray(RuntimeConfig(dashboard=False, ray_num_cpus=2, object_store_mb=256))
    try:
        assert ray.get(kept_by_the_cleaner_logger.remote()) == [False, True]
    finally:
        ray.shutdown()
