"""A real browser on `centerexp board`: headless Chromium renders TensorBoard's page over two tiny
runs; both run names and a scalar tag must be in the rendered page; the server is then stopped
and nothing is left listening.

Needs Debian's chromium (`make install-browser`). `make test-browser` and CI (.ci/run exports
CENTEREXP_REQUIRE_BROWSER=1 before `make test`) require it; a plain `make test` on a machine
without it skips the browser tests. CENTEREXP_SCREENSHOT=PATH also saves the page over the
committed quick reference runs there (the README's picture: `make screenshot`).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from centerexp import board
from centerexp.training.train import start_run

from .conftest import REPO, write_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = bool(os.environ.get("CENTEREXP_REQUIRE_BROWSER"))  # make test-browser, screenshot, and CI (.ci/run)
needs_browser = pytest.mark.skipif(
    CHROMIUM is None and not REQUIRED,
    reason="no chromium (make install-browser); make test-browser and CI require it",
)

TINY = {
    "train": {"epochs": 1, "batch_size": 64, "threads": 1, "precision": "fp32", "eval_every": 2},
    "data": {"train_subset": 192, "test_subset": 100},
    "plot": {"max_points": 100, "gif": False},
}


# The accuracy curves (tags test/acc and train/acc), unsmoothed: the time series dashboard is read
# (its DOM is plain, the scalars dashboard's is in shadow roots), the scalars dashboard is pictured
# (it draws SVG, where the time series' WebGL charts stay blank in headless Chromium).
READ = "http://127.0.0.1:{port}/?tagFilter=acc&smoothing=0#timeseries"
PICTURE = "http://127.0.0.1:{port}/?darkMode=false#scalars&tagFilter=acc&_smoothingWeight=0"


EXPECTED = ("runalpha", "runbeta", "test/acc", "train/acc")  # both runs, and the cards the filter selects


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(port: int, screenshot: Path) -> str:
    """The page's DOM after its scripts ran (READ), and a screenshot (PICTURE); headless Chromium."""
    assert CHROMIUM, "chromium is not installed: make install-browser"
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,900"]
    common.append("--virtual-time-budget=20000")  # let the app fetch and draw before the snapshot
    shot = [*common, f"--screenshot={screenshot}", PICTURE.format(port=port)]
    subprocess.run(shot, check=True, capture_output=True, timeout=120)
    read = [*common, "--dump-dom", READ.format(port=port)]
    # A loaded machine (CI runs two test workers) can leave the app still fetching when the
    # virtual time runs out; read the page again rather than judge a half-drawn one.
    for _ in range(3):
        dom = subprocess.run(read, check=True, capture_output=True, text=True, timeout=120).stdout
        if all(marker in dom for marker in EXPECTED):
            break
    return dom


def serve(paths: list[Path], port: int) -> subprocess.Popen:
    """`centerexp board PATHS --port PORT` as a user starts it; returns once it printed its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "centerexp", "board", *map(str, paths), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:
        if line.startswith("TensorBoard over"):
            assert f"http://127.0.0.1:{port}/" in line
            return process
    process.wait()
    pytest.fail(f"centerexp board exited with {process.returncode} before serving")


def stop(process: subprocess.Popen, port: int) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) is not None
    board.check_port(port)  # raises if anything (the board or its TensorBoard) still listens
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


@needs_browser
def test_board_renders_both_runs_and_a_scalar_in_a_real_browser(tmp_path):
    assert CHROMIUM, "CENTEREXP_REQUIRE_BROWSER is set but chromium is not installed: make install-browser"
    config = write_config(tmp_path / "tiny.yaml", **TINY)
    runs = [start_run(config, [], tmp_path / "runs", name, progress=False)[0] for name in ("runalpha", "runbeta")]
    port = free_port()
    process = serve(runs, port)
    try:
        dom = render(port, tmp_path / "board.png")
    finally:
        stop(process, port)
    # Both runs in the run list, and the scalar cards the filter "acc" selects, by their tags (the
    # filter's own text is not either tag).
    assert all(marker in dom for marker in EXPECTED), [m for m in EXPECTED if m not in dom]
    assert (tmp_path / "board.png").stat().st_size > 10_000


@needs_browser
@pytest.mark.skipif(not os.environ.get("CENTEREXP_SCREENSHOT"), reason="CENTEREXP_SCREENSHOT not set")
def test_screenshot_of_the_reference_runs(tmp_path):
    quick = tmp_path / "quick"
    shutil.copytree(REPO / "runs" / "reference" / "quick", quick, ignore=shutil.ignore_patterns("tb", "plots"))
    port = free_port()
    process = serve([quick], port)
    try:
        shot = tmp_path / "board.png"
        dom = render(port, shot)
    finally:
        stop(process, port)
    assert "v1/quick/v1_0/s0" in dom and "v1/quick/v1_2/s2" in dom
    shutil.copyfile(shot, os.environ["CENTEREXP_SCREENSHOT"])


def test_ci_requires_the_browser_test():
    """.ci/run installs chromium and then runs make test with CENTEREXP_REQUIRE_BROWSER=1 set, so
    that a browser test that cannot run fails CI instead of skipping silently; make test itself
    does not set it, so a developer without chromium can still run it."""
    lines = [line.split("#")[0].strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    test = lines.index("make test")
    assert lines.index("make install-browser") < test
    assert "export CENTEREXP_REQUIRE_BROWSER=1" in lines[:test]
    assert not any("unset CENTEREXP_REQUIRE_BROWSER" in line for line in lines[:test])
    make_test = (REPO / "Makefile").read_text().split("\ntest: ", 1)[1].split("\n\n", 1)[0]
    assert "CENTEREXP_REQUIRE_BROWSER" not in make_test
