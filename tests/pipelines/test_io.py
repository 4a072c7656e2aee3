"""read_split: the one loader of model-ready splits refuses a missing, malformed or empty split naming the file."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from pipelines.errors import DataError
from pipelines.io import read_split
from tests.helpers import ROOT


def write(d: Path, name: str, df: pd.DataFrame) -> Path:
    path = d / f"{name}.parquet"
    df.to_parquet(path, index=False)
    return path


def test_reads_a_split_by_directory_and_name_or_by_path(tmp_path: Path) -> None:
    df = pd.DataFrame({"id": ["a", "b"], "text": ["x y", "z"], "label": ["p", "q"]})
    path = write(tmp_path, "test", df)
    pd.testing.assert_frame_equal(read_split(tmp_path, "test"), df)
    pd.testing.assert_frame_equal(read_split(path), df)
    assert list(read_split(tmp_path, "test", columns=["label"]).columns) == ["label"]


def test_a_missing_split_names_the_file_and_the_way_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'val.parquet'} does not exist: run the stage")):
        read_split(tmp_path, "val")


def test_a_split_without_text_or_label_names_the_file_and_the_column(tmp_path: Path) -> None:
    path = write(tmp_path, "train", pd.DataFrame({"text": ["x"], "category": ["p"]}))
    with pytest.raises(DataError, match=re.escape(f"the train split {path} has no column(s) ['label']")):
        read_split(tmp_path, "train")
    with pytest.raises(DataError, match=r"no column\(s\) \['id'\]"):
        read_split(path, columns=["id"])


def test_an_empty_split_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "test", pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)}))
    with pytest.raises(DataError, match=re.escape(f"the test split {path} is empty")):
        read_split(path)


def test_a_file_that_is_not_parquet_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "test.parquet"
    path.write_text("text,label\nx,p\n")
    with pytest.raises(DataError, match=re.escape(f"the test split {path} is not a readable Parquet file")):
        read_split(path)


@pytest.mark.parametrize("stage", ["baselines", "finetune", "register"])
def test_every_stage_reading_a_split_refuses_a_malformed_one_the_same_way(tmp_path: Path, stage: str) -> None:
    """The stages read splits through read_split: a split without labels is one DataError naming the file."""
    import importlib

    for name in ("train", "val", "test"):
        write(tmp_path, name, pd.DataFrame({"id": ["a", "b"], "text": ["x y", "z"]}))
    (tmp_path / "params.yaml").write_text("{}\n")
    main = importlib.import_module(f"pipelines.{stage}").main
    kwargs = {
        "baselines": {"data_dir": tmp_path, "track": False},
        "finetune": {"data_dir": tmp_path, "ckpt_dir": tmp_path / "ckpt", "out": tmp_path / "out"},
        "register": {"test": tmp_path / "test.parquet"},
    }[stage]
    with pytest.raises(DataError, match=r"the (train|test) split .*\.parquet has no column\(s\) \['label'\]"):
        main(params=tmp_path / "params.yaml", **kwargs)


@pytest.mark.integration
def test_stream_command_passes_stdout_through_the_filter_and_returns_the_exit_code(capfd) -> None:
    import sys

    from pipelines.io import stream_command

    code = "import sys; print('keep 1'); print('drop me'); print('keep 2'); sys.exit(3)"
    rc = stream_command([sys.executable, "-c", code], keep=lambda lines: (x for x in lines if "drop" not in x))
    assert rc == 3
    assert capfd.readouterr().out == "keep 1\nkeep 2\n"


@pytest.mark.integration
def test_stream_command_keeps_a_progress_bar_on_one_line(capfd) -> None:
    """A rank's tqdm bar redraws with carriage returns: they reach the terminal as they are (each redraw on
    its own line would flood it), and a redraw is a line for the filter too."""
    import sys

    from pipelines.io import stream_command

    code = (
        "import sys; w = sys.stdout.write; w('epoch 1:  0%\\r'); w('epoch 1: 50% drop\\r'); w('epoch 1: 100%\\n');"
        " w('caf\\u00e9 done\\r\\n')"
    )
    rc = stream_command([sys.executable, "-c", code], keep=lambda lines: (x for x in lines if "drop" not in x))
    assert rc == 0
    assert capfd.readouterr().out == "epoch 1:  0%\repoch 1: 100%\ncaf\u00e9 done\r\n"


@pytest.mark.integration
def test_stream_command_passes_a_redraw_on_before_the_next_output(tmp_path, capfd) -> None:
    """A redraw ending in a carriage return is shown at once, not held until the tool writes again: the child
    waits for the filter to have seen its redraw before it writes the next line."""
    import sys

    from pipelines.io import stream_command

    seen = tmp_path / "seen"
    code = (
        "import os, sys, time; sys.stdout.write('step 1\\r'); sys.stdout.flush(); t = time.monotonic()\n"
        f"while not os.path.exists({str(seen)!r}) and time.monotonic() - t < 20: time.sleep(0.05)\n"
        f"print('on time' if os.path.exists({str(seen)!r}) else 'held back')"
    )

    def keep(lines):
        for line in lines:
            if line == "step 1\r":
                seen.touch()
            yield line

    assert stream_command([sys.executable, "-c", code], keep=keep) == 0
    assert capfd.readouterr().out == "step 1\ron time\n"


@pytest.mark.integration
def test_a_streamed_tool_does_not_outlive_a_caller_killed_with_sigkill(tmp_path) -> None:
    """A training timeout kills the stage with SIGKILL: the launcher it streams must not keep running."""
    import signal
    import subprocess
    import sys
    import time

    pidfile = tmp_path / "child.pid"
    child = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    caller = f"import sys; from pipelines.io import stream_command; stream_command([sys.executable, '-c', {child!r}])"
    parent = subprocess.Popen([sys.executable, "-c", caller], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = int(pidfile.read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait()

        def alive() -> bool:
            try:
                state = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                return False
            return "State:\tZ" not in state  # a zombie has exited

        deadline = time.monotonic() + 20
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(), "the streamed tool kept running after its caller was killed"
    finally:
        parent.kill()
        if pidfile.exists() and pidfile.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
