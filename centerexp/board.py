"""`centerexp board`: TensorBoard on loopback over run folders, each under a readable name.

A run without event files (trained with plot.tensorboard off, or by a version before tb/ existed,
as the committed reference runs were) gets them written first from its own records: metrics.csv
(scalars), config.yaml and run.json (hparams), its feature frames or features.pt (images) and
features.pt with the MNIST test thumbnails (projector). They are derived data, so they are
regenerated where needed rather than committed.
"""

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from centerexp import plots
from centerexp.config import load_config
from centerexp.errors import CenterexpError
from centerexp.events import RunEvents, frame_steps, write_records
from centerexp.rundir import files
from centerexp.rundir.folder import NOT_A_RUN, is_run_dir, read_identity

HOST = "127.0.0.1"  # loopback only: the board serves the run folders' files to whoever connects
DEFAULT_PORT = 6006  # TensorBoard's own default


def find_runs(paths: list[Path]) -> list[Path]:
    """Each path is a run folder, or a folder with run folders somewhere beneath it."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise CenterexpError(f"{path}: no such file or folder", exit_code=2)
        if is_run_dir(path):
            found.append(path)
            continue
        beneath = sorted(p.parent for p in path.rglob(files.SUMMARY) if is_run_dir(p.parent)) if path.is_dir() else []
        if not beneath:
            raise CenterexpError(f"{path}: {NOT_A_RUN}, and no run folder lies beneath it", exit_code=2)
        found += beneath
    return list(dict.fromkeys(p.resolve() for p in found))  # each run once, in the order given


def display_name(run_dir: Path) -> str:
    """experiment/profile/arm/sSEED for a sweep's run, else the folder's name."""
    identity = read_identity(run_dir)
    if identity.get("experiment") and identity.get("arm"):
        seed = load_config(Path(run_dir) / files.CONFIG).train.seed
        parts = [identity["experiment"], identity.get("profile"), identity["arm"], f"s{seed}"]
        return "/".join(str(p) for p in parts if p)
    return Path(run_dir).name


def run_names(runs: list[Path]) -> dict[str, Path]:
    """A unique, readable name per run: a clash adds the parent folder's name, then a number."""
    names = [display_name(r) for r in runs]
    named = {}
    for name, run in zip(names, runs):
        if names.count(name) > 1:
            name = f"{run.parent.name}/{name}"
        base, n = name, 2
        while name in named:
            name, n = f"{base}-{n}", n + 1
        named[name] = run
    return named


def has_events(run_dir: Path) -> bool:
    return any((Path(run_dir) / files.TENSORBOARD).glob("events.out.tfevents.*"))


def write_events_from_records(run_dir: Path) -> None:
    """tb/ for a run that has none, from its metrics.csv, config, frames and features.pt."""
    from centerexp.training.data import load_mnist

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / files.CONFIG)
    events = RunEvents(run_dir, committed_step=0)
    try:
        last_step = write_records(events, run_dir, cfg) or 0
        frames = frame_steps(run_dir)
        for step, png in frames:
            events.image(png, step)
        features = _load_features(run_dir)
        if features is not None:
            step = last_step
            if not frames:  # plots are not kept (as in the committed reference runs): draw the last one
                png = run_dir / files.TENSORBOARD / "features.png"
                panel = (features["features"], features["labels"], features["centers"], "test features")
                plots.plot_features([panel], png, f"{run_dir.name}: step {step}")
                events.image(png, step)
                png.unlink()
            _, test_set = load_mnist(cfg.data, cfg.train.seed, torch.device("cpu"))
            idx = plots.test_sample(cfg, len(test_set))
            if torch.equal(test_set.labels[idx], features["labels"].cpu()):
                images = test_set.images[idx]
            else:  # not the sample this config gives (an older sampling rule): blank thumbnails
                images = torch.zeros(len(features["labels"]), 1, 28, 28, dtype=torch.uint8)
            events.embedding(features["features"], features["labels"], images, features["centers"], step)
        events.flush()
    finally:
        events.close()


def _load_features(run_dir: Path) -> dict | None:
    try:
        return torch.load(run_dir / files.FEATURES, weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError):
        return None


def check_port(port: int, host: str = HOST) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the server binds: a listener blocks the port, closed connections (TIME_WAIT) do not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise CenterexpError(
                f"--port {port}: {host}:{port} is already in use; choose another port", exit_code=2
            ) from None


def prepare(paths: list[Path], say=print) -> dict[str, Path]:
    """The runs to show, by name, each with event files (written from its records if missing)."""
    named = run_names(find_runs(paths))
    for name, run in named.items():
        if not has_events(run):
            say(f"{name}: no tb/ yet, writing it from the run's records")
            write_events_from_records(run)
    return named


def link_runs(named: dict[str, Path], into: Path) -> Path:
    """A logdir whose entry NAME is a link to that run's tb/: TensorBoard then shows each run under
    its name (--logdir_spec would add "/." to every name and turns the projector off)."""
    for name, run in named.items():
        link = Path(into) / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((run / files.TENSORBOARD).resolve(), target_is_directory=True)
    return Path(into)


def start_server(logdir: Path, port: int, host: str = HOST, timeout: float = 90) -> subprocess.Popen:
    """TensorBoard in a child process, returned once it lists every run of ``logdir`` (it loads
    them in the background after it starts answering: a page opened earlier would miss some)."""
    expected = sum(1 for p in Path(logdir).rglob("*") if p.is_symlink())
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", host, "--port", str(port)]
    # The Python loader, not the Rust data server: it honours the purge a resumed run writes, which
    # is what hides the events of steps redone after a kill (and what the tests read back with).
    command.append("--load_fast=false")
    local = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    with tempfile.TemporaryFile("w+") as log:  # not a pipe: an unread pipe would block a chatty server
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            _wait_until_listed(server, log, local, f"http://{host}:{port}/data/runs", expected, timeout)
        except BaseException:  # a timeout, a failed start, Ctrl-C or kill while waiting: no orphan server
            stop_server(server)
            raise
        return server


def _wait_until_listed(server, log, opener, url: str, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            last = (log.read().strip().splitlines() or ["(no output)"])[-1]
            raise CenterexpError(f"TensorBoard exited with status {server.returncode}: {last}", exit_code=1)
        try:
            if len(json.loads(opener.open(url, timeout=2).read())) >= expected:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise CenterexpError(f"TensorBoard did not list the runs at {url} within {timeout:.0f} s", exit_code=1)


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _stop_like_ctrl_c(signum, frame):
    raise KeyboardInterrupt


def board(paths: list[Path], port: int = DEFAULT_PORT, say=print) -> None:
    """Serve the runs until interrupted (Ctrl-C), printing the URL first."""
    check_port(port)
    named = prepare(paths, say)
    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)  # `kill` stops TensorBoard too, never orphans it
    with tempfile.TemporaryDirectory(prefix="centerexp-board-") as logdir:
        server = start_server(link_runs(named, Path(logdir)), port)
        try:
            say(f"TensorBoard over {len(named)} run(s): http://{HOST}:{port}/  (Ctrl-C stops it)")
            for name in named:
                say(f"  {name}")
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop_server(server)
