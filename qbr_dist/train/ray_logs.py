"""Worker setup hook of an embedded Ray without a dashboard (`runtime.start_ray`). Ray imports this module in
every worker process, so it imports nothing but `logging`.

Ray Train's placement-group cleaner asks the state API, which the dashboard serves, once a second whether the
training controller still lives; without a dashboard it cannot know, and warns each time, for a whole training.
The hook drops that one warning; the cleaner's other messages stay."""
from __future__ import annotations

import logging

PG_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
STATE_API_WARNING = "State API may be temporarily unavailable"


def quiet_state_api_warnings() -> None:
    logging.getLogger(PG_CLEANER_LOGGER).addFilter(lambda record: STATE_API_WARNING not in record.getMessage())
