"""A default run makes no network call, runs with no network at all, and W&B cannot kill it."""

from __future__ import annotations

import ipaddress
import json
import logging
import shutil
import socket
import subprocess

import pytest

from conftest import cli_args, run_cli
from pretrainlab.network import apply_offline, offline_hint


def _is_local(host: object) -> bool:
    if host in (None, "localhost", ""):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def network_attempts(monkeypatch) -> list[object]:
    """Every attempt of this process to reach a non-loopback address, refused and recorded."""
    attempts: list[object] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            attempts.append(address)
            raise OSError(101, "network is off in this test")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            attempts.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "network is off in this test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


@pytest.fixture
def restore_offline():
    """Tests run offline (conftest); put it back whatever a test switched."""
    yield
    apply_offline(True)


def test_a_default_run_reaches_no_host(compose_cfg, run_training, network_attempts, restore_offline):
    # The default logger (W&B, offline) included: it talks to its local service only.
    cfg = compose_cfg("objective=causal", "logger=wandb")
    apply_offline(False)  # the run itself must switch the libraries off again
    try:
        metrics = run_training(cfg)
    finally:
        import wandb

        wandb.finish()
    assert metrics["status"] == "ok"
    assert network_attempts == []
    import datasets.config
    import huggingface_hub

    assert huggingface_hub.is_offline_mode() and datasets.config.HF_HUB_OFFLINE


def test_offline_hint_says_how_to_download(tmp_path, restore_offline):
    apply_offline(True)
    assert "add offline=false" in offline_hint("someone/some-model")
    assert offline_hint(str(tmp_path)) == ""  # a local folder: downloads are not the problem
    apply_offline(False)
    assert offline_hint("someone/some-model") == ""


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -rn` (user and network namespaces)")
def test_a_run_succeeds_with_networking_unavailable(tiny_corpus, cache_dir, tmp_path):
    """The whole command in a network namespace with no interface up: nothing can be reached."""
    run = tmp_path / "run"
    args = [*cli_args(tiny_corpus), "objective=causal", "logger=wandb", f"hydra.run.dir={run}"]
    env = {"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
    result = run_cli(["unshare", "-rn", "pretrainlab-train", *args], cache_dir, env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["status"] == "ok"
    assert list((run / "wandb").glob("offline-run-*"))


def test_wandb_that_cannot_start_online_falls_back_to_offline(compose_cfg, monkeypatch, caplog):
    import wandb

    from pretrainlab.train import build_loggers

    real_init = wandb.init
    modes: list[str] = []

    def init(*args, **kwargs):
        modes.append(kwargs.get("mode"))
        if kwargs.get("mode") == "online":
            raise wandb.errors.CommError("could not reach api.wandb.ai")
        return real_init(*args, **kwargs)

    wandb.finish()  # no run of an earlier test may be reused
    monkeypatch.setattr(wandb, "init", init)
    cfg = compose_cfg("logger=wandb", "logger.wandb.mode=online")
    with caplog.at_level(logging.WARNING, logger="pretrainlab.train"):
        (logger,) = build_loggers(cfg)
    try:
        mode = logger.experiment.settings.mode  # the fallback run starts here
        assert modes == ["online", "offline"]
        assert mode in ("offline", "offline-run")
        assert any("W&B could not start online (CommError" in r.getMessage() for r in caplog.records)
    finally:
        wandb.finish()


def test_eval_and_generate_commands_run_offline(
    trained_run, compose_cfg, tmp_path, network_attempts, restore_offline, capsys
):
    """pretrainlab-eval applies the run's saved ``offline`` setting, pretrainlab-generate reads
    only the run folder: both switch the libraries offline, whatever the process had."""
    from omegaconf import OmegaConf

    from pretrainlab.evaluate import evaluate_run
    from pretrainlab.infer import generate_main
    from pretrainlab.network import is_offline

    run = tmp_path / "run"
    shutil.copytree(trained_run("causal"), run)
    (run / ".hydra").mkdir()
    cfg = compose_cfg(*trained_run.overrides("causal"), output_dir=run)
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    quick = ["evaluation.probe=false", "evaluation.cloze=false", "evaluation.continuation=false"]

    apply_offline(False)
    evaluate_run(run, quick)
    assert is_offline()

    apply_offline(False)
    generate_main([str(run), "人民", "decoding.max_new_tokens=4"])
    assert is_offline() and capsys.readouterr().out.strip()
    assert network_attempts == []
