"""Progress bars reach the terminal in full and the stage's log as a few lines with estimates."""
from __future__ import annotations

import io
import logging

from tqdm import tqdm

from stages.common.runner import ProgressLog


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _logger(name: str) -> tuple[logging.Logger, _Lines]:
    log, handler = logging.getLogger(name), _Lines()
    log.handlers, log.propagate = [handler], False
    log.setLevel(logging.INFO)
    return log, handler


def test_bars_go_to_the_terminal_and_a_few_lines_with_estimates_to_the_log():
    terminal = io.StringIO()
    log, got = _logger("test.progress")
    out = ProgressLog(terminal, log, every=3600.0)
    for _ in tqdm(range(200), desc="distill atom ipc10", file=out, mininterval=0, miniters=1):
        pass
    for seed in tqdm([0, 1], desc="evaluate", file=out, mininterval=0):
        for _ in tqdm(range(50), desc=f"evaluate seed {seed}", file=out, mininterval=0, leave=False):
            pass
    out.write("error: something went wrong\n")
    assert terminal.getvalue().count("\r") > 200  # every redraw reached the terminal
    # the log: the first state, each finished bar once, the complete line; no redraws
    assert got.lines[0].startswith("distill atom ipc10:   0%")
    finished = [line for line in got.lines if "100%|" in line]
    assert [line.split(":")[0] for line in finished] == ["distill atom ipc10", "evaluate seed 0", "evaluate seed 1",
                                                         "evaluate"]
    assert all("<" in line and "it/s" in line for line in finished)  # elapsed<remaining, rate
    assert got.lines[-1] == "error: something went wrong" and len(got.lines) <= 8
    assert not any("\x1b" in line or "\r" in line for line in got.lines)


def test_a_long_bar_is_logged_every_interval():
    log, got = _logger("test.progress.every")
    out = ProgressLog(io.StringIO(), log, every=0.0)  # every redraw is due
    for _ in tqdm(range(20), desc="decode images", file=out, mininterval=0, miniters=1):
        pass
    assert len([line for line in got.lines if line.startswith("decode images")]) >= 20
