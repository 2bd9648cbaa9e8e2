"""`qbr report` of the shared tiny run: the same report from the stages as they are, and a clear
refusal for a config that did not make them (the report would label results with it)."""
from __future__ import annotations

import pytest

from qbr_dist import pipeline
from qbr_dist.config import config_from_dict

pytestmark = pytest.mark.integration


def test_report_renders_the_run_and_refuses_a_config_that_did_not_make_it(tokenized_run):
    cfg = tokenized_run.cfg
    report = pipeline.report_only(cfg)
    assert report["models"] == tokenized_run.report["models"] and report["config"] == cfg.to_dict()

    other = cfg.to_dict()
    other["train"]["lr"] *= 2  # the tokenizer stages still match; the first model trained with it does not
    with pytest.raises(pipeline.StageNotCurrent, match="bert4rec: computed with another config"):
        pipeline.report_only(config_from_dict(other))
    other["quant"]["codebook_size"] = 4
    with pytest.raises(pipeline.StageNotCurrent, match="quantize: computed with another config"):
        pipeline.report_only(config_from_dict(other))
