"""Opening a shared run folder is safe: its saved config cannot make pretrainlab run foreign code.

``pretrainlab-reproduce`` and ``pretrainlab-eval`` instantiate from ``RUN_DIR/.hydra/config.yaml``;
``resume=RUN_DIR`` does not (the run's config comes from conf/ and the command line, and must
equal the saved one). A pickle payload named by a callback is refused with one line before any
code is imported or run.
"""

from __future__ import annotations

import builtins
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import cli_args
from pretrainlab import config_dir
from pretrainlab.trusted_targets import untrusted_problem

ALLOWED = "allowed: classes under pretrainlab, torch.optim, transformers.optimization, pytorch_lightning"
PAYLOAD = {"_target_": "torch.load", "f": "payload.pt", "weights_only": False}


class _Payload:
    """Unpickling it creates ``marker``: what a real payload could do instead, anything."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def _saved_config(corpus: Path, cache: Path, *overrides: str) -> dict:
    """The config Hydra saves for a test-sized command-line run (unresolved, no hydra node)."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=[*cli_args(corpus), f"paths.cache_dir={cache}", *overrides]
        )
    return OmegaConf.to_container(cfg, resolve=False)


def _shared_run(folder: Path, saved: dict) -> tuple[Path, Path]:
    """A run folder as someone might share it: payload.pt, and a config that loads it."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(saved), encoding="utf-8")
    if not (folder / "metrics.json").exists():
        (folder / "metrics.json").write_text('{"status": "ok", "objective": "causal"}\n', encoding="utf-8")
    marker = folder.parent / "payload-ran"
    (folder / "payload.pt").write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    return folder, marker


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def test_reproduce_refuses_a_pickle_payload_before_anything_runs(
    tiny_corpus, cache_dir, tmp_path, monkeypatch, capsys
):
    from pretrainlab import reproduce

    saved = _saved_config(tiny_corpus, cache_dir, "objective=causal")
    saved["callbacks"]["payload"] = dict(PAYLOAD)
    run, marker = _shared_run(tmp_path / "run", saved)
    monkeypatch.chdir(run)  # `f: payload.pt` is relative, as in the report
    started: list[list[str]] = []
    real_run = subprocess.run

    def recording_run(command, *args, **kwargs):
        started.append(list(command))
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(reproduce.subprocess, "run", recording_run)
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main([str(run), "--out", str(tmp_path / "again")])

    assert not marker.exists()  # the payload never ran
    assert started == []  # nor did anything else: no training process was started
    assert exit_info.value.code == 2
    lines = _error_lines(capsys.readouterr().err)
    assert lines == [
        f"error: {run}/.hydra/config.yaml: callbacks.payload._target_=torch.load is not allowed "
        f"({ALLOWED}, lightning)"
    ]
    assert not (tmp_path / "again").exists()


def test_reproduce_runs_the_checked_copy_not_the_folder(tiny_corpus, cache_dir, tmp_path, monkeypatch):
    """The training process reads the bytes that were checked, from a folder holding nothing else
    (a shared .hydra/ may hold more YAML for Hydra to find), and only a clean config starts it."""
    from pretrainlab import reproduce

    run, _ = _shared_run(tmp_path / "run", _saved_config(tiny_corpus, cache_dir, "objective=causal"))
    (run / ".hydra" / "hydra.yaml").write_text("hydra:\n  callbacks: {x: {_target_: os.system}}\n")
    seen: dict[str, object] = {}

    def fake_run(command, *args, **kwargs):
        config_path = Path(command[command.index("--config-path") + 1])
        seen["files"] = sorted(p.name for p in config_path.iterdir())
        seen["text"] = (config_path / "config.yaml").read_text(encoding="utf-8")
        return subprocess.CompletedProcess(command, 1)

    monkeypatch.setattr(reproduce.subprocess, "run", fake_run)
    with pytest.raises(SystemExit):  # the fake training "fails"
        reproduce.main([str(run), "--out", str(tmp_path / "again")])
    assert seen["files"] == ["config.yaml"]
    assert seen["text"] == (run / ".hydra" / "config.yaml").read_text(encoding="utf-8")


def _set(*path: str, **values: object):
    """A change of the saved config: ``values`` go into the node at ``path``."""

    def apply(cfg: dict) -> None:
        node = cfg
        for key in path:
            node = node[key]
        node.update(values)

    return apply


WRAP = "pretrainlab.callbacks.TokenThroughput"
TAMPERED = {
    "callback": (
        _set("callbacks", payload=PAYLOAD),
        r"callbacks.payload._target_=torch.load is not allowed \(allowed: classes under pretrainlab,",
    ),
    "strategy": (_set("trainer", strategy=PAYLOAD), r"trainer.strategy._target_=torch.load is not allowed"),
    "in a list": (
        _set("callbacks", wrap={"_target_": WRAP, "items": [{"a": 1}, PAYLOAD]}),
        r"callbacks.wrap.items\[1\]._target_=torch.load is not allowed",
    ),
    "positional": (
        _set("callbacks", wrap={"_target_": WRAP, "_args_": [PAYLOAD]}),
        r"callbacks.wrap._args_\[0\]._target_=torch.load is not allowed",
    ),
    "partial": (
        _set("optimizer", "optimizer", _target_="os.system", _partial_=True),
        r"optimizer.optimizer._target_=os.system is not allowed",
    ),
    "leads out of the package": (
        _set("callbacks", payload={"_target_": "pretrainlab.utils.os.system", "command": "true"}),
        r"callbacks.payload._target_=pretrainlab.utils.os.system is not allowed \(posix.system is not",
    ),
    "a function": (
        _set(
            "callbacks", payload={"_target_": "pretrainlab.utils.write_text_atomic", "path": "x", "text": "y"}
        ),
        r"callbacks.payload._target_=pretrainlab.utils.write_text_atomic is not allowed \(pretrainlab.utils",
    ),
    "no such class": (
        _set("callbacks", payload={"_target_": "pretrainlab.callbacks.Nope"}),
        r"callbacks.payload._target_=pretrainlab.callbacks.Nope cannot be imported",
    ),
    "interpolated name": (
        _set("callbacks", payload={"_target_": "${oc.env:T}"}),
        r"callbacks.payload._target_=\$\{oc.env:T\} is not allowed",
    ),
    "node built by a resolver": (
        _set("callbacks", payload="${oc.create:'{_target_: torch.load}'}"),
        r"callbacks.payload=\$\{oc.create:.*: resolver oc.create is not allowed",
    ),
    "node built by a dict literal": (
        _set("callbacks", payload="${oc.select:'}',{_target_: torch.load, f: payload.pt}}"),
        r"callbacks.payload=\$\{oc.select:.*: a dict literal in an interpolation is not allowed",
    ),
    "hydra node": (_set(hydra={"callbacks": {"x": PAYLOAD}}), r"hydra: not allowed in a saved run config"),
    "defaults list": (_set(defaults=["_self_"]), r"defaults: not allowed in a saved run config"),
}


@pytest.mark.parametrize("tamper", list(TAMPERED))
def test_every_way_to_name_code_is_checked(tamper, tiny_corpus, cache_dir):
    """Nested targets, lists, positional arguments, partials, names that lead out of an allowed
    package, interpolations that build a node, and Hydra's own settings."""
    cfg = _saved_config(tiny_corpus, cache_dir)
    assert untrusted_problem(cfg) is None
    change, message = TAMPERED[tamper]
    change(cfg)
    problem = untrusted_problem(cfg)
    assert problem is not None and re.match(message, problem), problem


@pytest.mark.parametrize(
    "overrides",
    [
        ("objective=masked", "logger=wandb"),
        ("objective=causal", "logger=csv", "trainer=ddp"),
        ("objective=seq2seq", "logger=tensorboard", "trainer=fsdp"),
        ("objective=prefix", "logger=none"),
    ],
)
def test_every_config_pretrainlab_composes_is_trusted(overrides, tiny_corpus, cache_dir):
    """No false alarm: what conf/ composes (every objective, logger and strategy) passes."""
    assert untrusted_problem(_saved_config(tiny_corpus, cache_dir, *overrides)) is None


def test_allow_list_module_imports_neither_torch_nor_lightning():
    code = (
        "import sys, pretrainlab.trusted_targets; "
        "print(sorted(m for m in ('torch', 'pytorch_lightning', 'lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_eval_refuses_an_untrusted_objective_before_importing_it(
    trained_run, tiny_corpus, cache_dir, tmp_path, monkeypatch, capsys
):
    """pretrainlab-eval imports ``objective._target_`` of the saved config: a module whose import
    alone has effects must not be imported."""
    from pretrainlab.evaluate import main as eval_main

    modules = tmp_path / "site"
    modules.mkdir()
    marker = tmp_path / "imported"
    (modules / "foreign_objective.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Objective:\n    name = 'causal'\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(modules))
    saved = _saved_config(tiny_corpus, cache_dir, "objective=causal")
    saved["objective"]["_target_"] = "foreign_objective.Objective"
    run = tmp_path / "run"
    shutil.copytree(trained_run("causal"), run)  # a finished run: hf/ and metrics.json load
    _shared_run(run, saved)
    capsys.readouterr()  # what training the fixture's run printed

    with pytest.raises(SystemExit) as exit_info:
        eval_main([str(run)])

    assert not marker.exists()
    assert exit_info.value.code not in (0, None)
    lines = _error_lines(capsys.readouterr().err) + _error_lines(str(exit_info.value.code))
    assert lines == [
        f"error: {run}/.hydra/config.yaml: objective._target_=foreign_objective.Objective is not allowed "
        f"({ALLOWED}, lightning)"
    ]


def test_resume_does_not_instantiate_from_the_saved_config(
    tiny_corpus, cache_dir, tmp_path, monkeypatch, capsys
):
    """``resume=RUN_DIR`` composes its config from conf/ and the command line and refuses a saved
    config that differs: a payload in the folder's config is never instantiated."""
    from pretrainlab.train import cli

    saved = _saved_config(tiny_corpus, cache_dir)
    saved["callbacks"]["payload"] = dict(PAYLOAD)
    run, marker = _shared_run(tmp_path / "run", saved)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not read")
    monkeypatch.chdir(run)
    args = [*cli_args(tiny_corpus), f"paths.cache_dir={cache_dir}", f"resume={run}"]
    monkeypatch.setattr(sys, "argv", ["pretrainlab-train", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli()
    assert exit_info.value.code == 2
    assert not marker.exists()
    assert "setting callbacks.payload differs" in capsys.readouterr().err
