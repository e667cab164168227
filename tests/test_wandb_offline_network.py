"""An offline W&B run attempts no network operation at all, in any of its processes.

wandb 0.31 builds its OpenTelemetry analytics from the *global* settings, not the run's: with
``wandb.init(mode="offline")`` (what ``logger=wandb`` does) a thread of the training process still
looks up ``api.forge.coreweave.com`` at exit, to probe the telemetry endpoint. The lookup fails
without a network, silently, so a network namespace (tests/test_network.py) cannot see it; it
runs at interpreter exit, after a test's socket hooks are gone, and such hooks never see W&B's
Go service anyway. Here the whole process tree runs under ``strace -f``, which records every
*attempted* connect and send, failed ones included.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wandb_records
from pretrainlab.network import quiet_wandb


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    probe = ["strace", "-f", "-qq", "-e", "trace=connect", "-o", os.devnull, "true"]
    return subprocess.run(probe, capture_output=True).returncode == 0


needs_strace = pytest.mark.skipif(
    not _strace_works(), reason="needs a working `strace -f` (apt-get install strace; ptrace allowed)"
)

# The syscalls that start talking to another host: a name lookup is a connect (glibc and Go both
# connect their UDP socket to the resolver) or a sendto/sendmsg/sendmmsg with an address.
TRACED = "trace=connect,sendto,sendmsg,sendmmsg"
INET = re.compile(
    r"sa_family=AF_INET6?, sin6?_port=htons\((?P<port>\d+)\), .*?"
    r"(?:inet_addr\(\"(?P<v4>[^\"]+)\"\)|inet_pton\(AF_INET6, \"(?P<v6>[^\"]+)\")"
)
# systemd-resolved's own socket: asking it is a name lookup too. (Not nscd's: glibc asks it for
# user names as well, and here it finds none; a host running nscd would hide lookups from this.)
RESOLVER_SOCKETS = ("systemd/resolve/",)


def network_attempts(trace: str) -> list[str]:
    """The traced syscalls that try to reach beyond this machine, or to resolve a name.

    Loopback and unix sockets are W&B's own service talking to the training process; anything on
    port 53 is DNS whatever the resolver's address (127.0.0.53 on systemd machines), and so is
    a connect to systemd-resolved.
    """
    attempts = []
    for line in trace.splitlines():
        if any(path in line for path in RESOLVER_SOCKETS):
            attempts.append(line)
            continue
        for match in INET.finditer(line):
            host = match["v4"] or match["v6"]
            if match["port"] == "53" or not ipaddress.ip_address(host).is_loopback:
                attempts.append(line)
                break
    return attempts


def test_the_recorder_sees_failed_lookups_and_connects():
    """What a refused run leaves in a trace: the recorder must count it, success or not."""
    trace = "\n".join(
        [
            '7 connect(6, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, '
            "16) = -1 ENETUNREACH (Network is unreachable)",
            '7 connect(6, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("127.0.0.53")}, 16) = 0',
            "8 connect(9, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), inet_pton("
            'AF_INET6, "2606:4700::1", &sin6_addr), sin6_scope_id=0}, 28) = -1 EINPROGRESS',
            '9 connect(6, {sa_family=AF_UNIX, sun_path="/run/systemd/resolve/io.systemd.Resolve"}, 42) = 0',
            # W&B's own service: a unix socket and loopback TCP are fine.
            '9 connect(7, {sa_family=AF_UNIX, sun_path="/tmp/wandb-1-2-3/socket"}, 43) = 0',
            '9 connect(7, {sa_family=AF_INET, sin_port=htons(40123), sin_addr=inet_addr("127.0.0.1")}, '
            "16) = 0",
            "9 connect(7, {sa_family=AF_INET6, sin6_port=htons(40123), sin6_flowinfo=htonl(0), "
            'inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
        ]
    )
    assert len(network_attempts(trace)) == 4


# What pretrainlab's logger does before W&B starts (build_loggers -> start_wandb -> quiet_wandb,
# checked without a child below), then an offline run as the logger starts it. The child imports
# neither torch nor Lightning: under strace -f that import alone took ~40 s.
CHILD = """
import sys
import wandb
from pretrainlab.network import quiet_wandb

mode, save_dir = sys.argv[1], sys.argv[2]
quiet_wandb(mode)
run = wandb.init(mode=mode, dir=save_dir, project="pretrainlab")
for step, loss in enumerate([3.0, 2.5, 2.0]):
    run.log({"train/loss": loss}, step=step)
run.summary["val/loss"] = 1.75
wandb.finish()
"""


def _wandb_records(run: Path) -> list:
    (log,) = run.glob("offline-run-*/run-*.wandb")
    return wandb_records(log)


def _key(item) -> str:
    """A history or summary item's name: wandb-core writes it as ``nested_key`` parts."""
    return item.key or "/".join(item.nested_key)


@pytest.mark.slow  # a traced child process
@needs_strace
def test_an_offline_wandb_logger_attempts_no_network(compose_cfg, tmp_path):
    """pretrainlab's own W&B logger, offline as configured by default, logs a few metrics in a
    child process traced with ``strace -f``: no attempted connect or DNS send, and the offline
    run still holds every history row and the summary (what ``wandb sync`` uploads later)."""
    cfg = compose_cfg("logger=wandb")
    assert cfg.logger.wandb.mode == "offline"  # the default under test
    save_dir = Path(cfg.logger.wandb.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    script, trace = tmp_path / "child.py", tmp_path / "strace.txt"
    script.write_text(CHILD)

    # Only the configured mode may make the run offline: WANDB_MODE=offline (which tests/conftest
    # sets for command runs) puts W&B's global settings offline too, and hides the lookup.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["PYTHONWARNINGS"] = "ignore"
    strace = ["strace", "-f", "-qq", "-e", TRACED, "-e", "signal=none", "-o", str(trace)]
    command = [*strace, sys.executable, str(script), cfg.logger.wandb.mode, str(save_dir)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]

    assert network_attempts(trace.read_text()) == []
    records = _wandb_records(save_dir / "wandb")
    losses = [
        float(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "history"
        for item in r.history.item
        if _key(item) == "train/loss"
    ]
    assert losses == [3.0, 2.5, 2.0]
    summary = {
        _key(item): item.value_json
        for r in records
        if r.WhichOneof("record_type") == "summary"
        for item in r.summary.update
    }
    assert float(summary["val/loss"]) == 1.75


@pytest.fixture
def clean_wandb_env(monkeypatch):
    """No W&B variable from the test's own environment; what a test sets is undone after it."""
    for name in [n for n in os.environ if n.startswith("WANDB_")]:
        monkeypatch.delenv(name)
    yield
    os.environ.pop("WANDB_ERROR_REPORTING", None)  # before monkeypatch puts the originals back


@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_an_offline_or_disabled_run_turns_wandb_telemetry_off(mode, clean_wandb_env):
    quiet_wandb(mode)
    assert os.environ["WANDB_ERROR_REPORTING"] == "false"


def test_an_online_run_and_a_users_choice_are_left_alone(clean_wandb_env, monkeypatch):
    quiet_wandb("online")
    assert "WANDB_ERROR_REPORTING" not in os.environ  # online: W&B as its users know it
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "true")
    quiet_wandb("offline")
    assert os.environ["WANDB_ERROR_REPORTING"] == "true"  # said explicitly: the user's call


def test_pretrainlab_s_wandb_logger_turns_telemetry_off_before_wandb_starts(
    compose_cfg, clean_wandb_env, monkeypatch
):
    """The traced test above runs what this checks pretrainlab's logger does first."""
    from pretrainlab import network
    from pretrainlab.train import build_loggers

    seen: list[str | None] = []
    real = network.quiet_wandb
    monkeypatch.setattr(network, "quiet_wandb", lambda mode: (seen.append(mode), real(mode)))
    cfg = compose_cfg("logger=wandb")
    build_loggers(cfg)
    assert seen == ["offline"]
    assert os.environ["WANDB_ERROR_REPORTING"] == "false"
