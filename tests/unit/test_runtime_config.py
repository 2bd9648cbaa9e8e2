import json
import os

import torch

from qbr_dist.config import load_config
from qbr_dist.train.engine import deepspeed_config, skip_inference_allreduce_kernel
from qbr_dist.train.runtime import carry_epoch_sums, my_slice, remove_untracked_checkpoints, use_embedded_environment


def test_deepspeed_config_follows_the_runtime_section():
    runtime = load_config(None, ["runtime.zero_stage=3", "runtime.precision='bf16'", "runtime.grad_clip=0.5"]).runtime
    ds = deepspeed_config(runtime, micro_batch=64)
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["bf16"]["enabled"] is True
    assert ds["gradient_clipping"] == 0.5
    assert ds["train_micro_batch_size_per_gpu"] == 64 and ds["gradient_accumulation_steps"] == 1


def test_rank_slices_partition_a_global_batch_in_order():
    batch = torch.arange(10)
    slices = [my_slice(batch, rank, 3) for rank in range(3)]
    assert torch.equal(torch.cat(slices), batch)
    assert [len(s) for s in slices] == [4, 4, 2]
    assert torch.equal(my_slice(batch, 0, 1), batch)


def test_epoch_sums_carried_through_checkpoints_equal_sums_run_straight_through():
    """One process: the all-reduce is the identity. Two checkpoints mid-epoch, then the epoch's end."""
    carried = carry_epoch_sums({}, {"loss": 1.5, "masked": 3})
    carried = carry_epoch_sums(carried, {"loss": 2.0, "masked": 4})
    assert carry_epoch_sums(carried, {"loss": 0.25, "masked": 1, "steps": 2}) == {
        "loss": 3.75, "masked": 8, "steps": 2}
    assert carry_epoch_sums({}, {}) == {}


def test_deepspeed_builds_no_shared_memory_kernel_once_skipped(tmp_path, monkeypatch):
    """DeepSpeed's process-group start asks for the kernel through this hook: skipped, nothing is compiled."""
    from deepspeed.comm.torch import build_shm_op

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    skip_inference_allreduce_kernel()
    assert build_shm_op() is None
    assert not any(tmp_path.iterdir())


def test_the_embedded_ray_environment_keeps_what_the_user_set(monkeypatch):
    monkeypatch.delenv("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    use_embedded_environment()
    assert os.environ["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == "1" and os.environ["RAY_AUTH_MODE"] == "token"


def test_checkpoints_ray_train_never_recorded_are_removed_before_a_run_resumes(tmp_path):
    for name in ("checkpoint_a", "checkpoint_b", "checkpoint_c", "best"):
        (tmp_path / name).mkdir()
    assert remove_untracked_checkpoints(tmp_path) == []  # no snapshot yet: nothing is known, nothing removed
    (tmp_path / "checkpoint_manager_snapshot.json").write_text(json.dumps({"checkpoint_layout": "another"}))
    assert remove_untracked_checkpoints(tmp_path) == []  # a snapshot this code does not read: left alone
    listed = {"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_a"}, {"checkpoint_dir_name": "checkpoint_b"}]}
    (tmp_path / "checkpoint_manager_snapshot.json").write_text(json.dumps(listed))
    assert remove_untracked_checkpoints(tmp_path) == ["checkpoint_c"]  # written after the last record, then stopped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "checkpoint_a", "checkpoint_b",
                                                         "checkpoint_manager_snapshot.json"]


def test_ray_trains_exit_on_ctrl_c_becomes_a_keyboard_interrupt_and_its_handler_is_undone():
    """A real SIGINT to this process, handled as Ray Train's handler does: by exiting (the code arrives as 1 through
    Ray's core worker) or by aborting the run and returning."""
    import os
    import signal
    import sys
    import time

    import pytest

    from qbr_dist.train.runtime import ctrl_c_as_keyboard_interrupt

    def ctrl_c(handler) -> None:
        signal.signal(signal.SIGINT, handler)  # as fit() installs its own
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # Python runs the handler between bytecodes

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), ctrl_c_as_keyboard_interrupt():
        ctrl_c(lambda *_: sys.exit(1))
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt), ctrl_c_as_keyboard_interrupt():
        ctrl_c(lambda *_: None)  # the run aborted, fit() returns
    with pytest.raises(SystemExit), ctrl_c_as_keyboard_interrupt():
        signal.signal(signal.SIGINT, lambda *_: None)
        raise SystemExit(1)  # an exit with no Ctrl-C stays one
    assert signal.getsignal(signal.SIGINT) is before
    with ctrl_c_as_keyboard_interrupt():
        pass  # and no Ctrl-C carries over from the blocks before

    import socket  # a wakeup descriptor set before the block (an event loop's) still hears of the signals in it

    reader, writer = socket.socketpair()
    writer.setblocking(False)
    reader.settimeout(2)  # a failure, not a hang
    earlier = signal.set_wakeup_fd(writer.fileno())
    usr1 = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        with ctrl_c_as_keyboard_interrupt():
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.05)
        assert reader.recv(16) == bytes([signal.SIGUSR1])
        assert signal.set_wakeup_fd(earlier) == writer.fileno()
    finally:
        signal.signal(signal.SIGUSR1, usr1)
        reader.close()
        writer.close()


def test_a_workers_console_drops_rays_own_info_records_but_not_its_warnings_nor_the_loops_records(tmp_path):
    import io
    import logging
    from pathlib import Path

    import ray

    from qbr_dist.train.runtime import RayInfoFilter, quiet_ray_info_on_console

    console, log_file = io.StringIO(), tmp_path / "session.log"
    logger = logging.getLogger("ray-like-by-path-" + str(tmp_path))  # Ray names some loggers by file path
    handlers = [logging.StreamHandler(console), logging.FileHandler(log_file)]
    for handler in handlers:
        logger.addHandler(handler)
    logger.propagate = False
    ray_file = str(Path(ray.__file__).parent / "train" / "x.py")

    def emit(level: int, pathname: str, message: str) -> None:
        logger.handle(logging.LogRecord(logger.name, level, pathname, 1, message, None, None))

    try:
        quiet_ray_info_on_console()
        quiet_ray_info_on_console()  # once more changes nothing
        assert len(handlers[0].filters) == 1 and not handlers[1].filters
        emit(logging.INFO, ray_file, "Reporting training result 3")
        emit(logging.WARNING, ray_file, "worker group restarted")
        emit(logging.INFO, __file__, "pretrain epoch 1: loss 9.1")
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        for other in {h for each in [logging.getLogger(), *logging.root.manager.loggerDict.values()]
                      for h in getattr(each, "handlers", [])}:  # this process's other handlers, as they were
            other.filters = [f for f in other.filters if not isinstance(f, RayInfoFilter)]
    assert console.getvalue().splitlines() == ["worker group restarted", "pretrain epoch 1: loss 9.1"]
    assert "Reporting training result 3" in log_file.read_text()  # files keep everything
