"""Several processes per run (trainer=ddp, trainer=fsdp) and other Hydra launchers."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from transformers import (
    BertConfig,
    BertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.models.bert.modeling_bert import BertLayer
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.models.t5.modeling_t5 import T5Block

from conftest import cli_args, run_cli
from pretrainlab import config_dir
from pretrainlab.distributed import (
    LAUNCH_VARIABLES,
    JobDDPStrategy,
    job_command,
    launch_scope,
    transformer_block_classes,
)
from pretrainlab.models.glm import build_glm
from pretrainlab.train import trainer_settings

TESTS = Path(__file__).parent


def test_ddp_preset_builds_the_job_strategy(compose_cfg):
    cfg = compose_cfg("trainer=ddp")
    settings = trainer_settings(cfg, tokens_per_step=1.0)
    assert isinstance(settings["strategy"], JobDDPStrategy)
    assert settings["devices"] == 2 and settings["accelerator"] == "cpu"
    assert settings["use_distributed_sampler"] is False  # our sampler shards each global batch


def test_fsdp_preset_composes_for_gpus(compose_cfg):
    cfg = compose_cfg("trainer=fsdp")
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.strategy._target_ == "pretrainlab.distributed.JobFSDPStrategy"
    assert cfg.trainer.strategy.state_dict_type == "full"


def test_extra_ranks_rerun_the_job_not_the_sweep(tmp_path):
    """In a multirun, sys.argv is the whole sweep; another rank must run only this job."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["objective=causal", "seed=2", f"hydra.runtime.output_dir={tmp_path}/3"],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    command, cwd = job_command(local_rank=1)
    assert command[1:3] == ["-m", "pretrainlab.train"]
    assert "objective=causal" in command and "seed=2" in command and "-m" not in command[3:]
    assert f'hydra.run.dir="{tmp_path}/3"' in command
    assert "hydra.output_subdir=null" in command  # .hydra/ belongs to rank 0
    assert cwd == cfg.hydra.runtime.cwd


def test_launch_scope_restores_what_launching_left_behind(monkeypatch):
    """Lightning sets these in the parent; left there, the next job would think its ranks exist."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("MASTER_PORT", "1234")
    with launch_scope():
        os.environ["LOCAL_RANK"] = "0"
        os.environ["MASTER_PORT"] = "5555"
    assert "LOCAL_RANK" not in os.environ
    assert os.environ["MASTER_PORT"] == "1234"
    assert {"LOCAL_RANK", "MASTER_PORT", "WORLD_SIZE"} <= set(LAUNCH_VARIABLES)


SMALL = {
    "vocab_size": 64,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


@pytest.mark.parametrize(
    ("model", "block"),
    [
        (lambda: LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=2)), LlamaDecoderLayer),
        (lambda: BertForMaskedLM(BertConfig(**SMALL)), BertLayer),
        (
            lambda: T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1)),
            T5Block,
        ),
        (
            lambda: build_glm(LlamaConfig(**SMALL, num_key_value_heads=2), max_block_positions=8),
            LlamaDecoderLayer,
        ),
    ],
)
def test_fsdp_units_are_the_backbone_blocks(model, block):
    assert block in transformer_block_classes(model())


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_and_only_rank_zero_writes(tiny_corpus, cache_dir, tmp_path):
    """Same global batch (1 x 8 = 2 x 4), same seed: the same validation loss after 4 steps.

    Causal: its collator draws nothing at random, so the two runs see the same tokens and the
    only difference is the order of floating-point sums (gradients averaged across ranks).
    Two DDP jobs in one sweep also check that each job starts its own ranks; the second
    streams its corpus (data.streaming=true): its ranks train on disjoint blocks, and its
    checkpoint holds both ranks' stream positions.
    """
    common = [
        *cli_args(tiny_corpus),
        "objective=causal",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        # All of the validation set: a limit counts batches, and the batches differ in size.
        "trainer.limit_val_batches=1.0",
    ]
    single = tmp_path / "single"
    one = run_cli(["pretrainlab-train", *common, "data.batch_size=8", f"hydra.run.dir={single}"], cache_dir)
    assert one.returncode == 0, one.stderr[-3000:]
    sweep = tmp_path / "ddp"
    ddp = run_cli(
        [
            "pretrainlab-train",
            "-m",
            *common,
            "trainer=ddp",
            "data.batch_size=4",
            "logger=wandb",
            "data.streaming=false,true",
            "data.validation_documents=20",
            "data.shuffle_window=2",
            "+callbacks.blocks._target_=batch_probe.RecordBlocks",
            "+callbacks.blocks.path=${paths.output_dir}/probe/blocks",
            f"hydra.sweep.dir={sweep}",
        ],
        cache_dir,
        env={"PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))},
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    a, b = _metrics(single), _metrics(sweep / "0")
    assert b["steps"] == a["steps"] == 4 and b["tokens_seen"] == a["tokens_seen"]
    assert math.isclose(b["val/loss"], a["val/loss"], rel_tol=1e-4), (a["val/loss"], b["val/loss"])
    assert _metrics(sweep / "1")["status"] == "ok"
    for job in (sweep / "0", sweep / "1"):
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1  # one W&B run, rank 0's
        assert not list(job.glob("*rank1*"))  # rank 1 wrote no log of its own
        assert (job / "hf" / "config.json").is_file()
        state = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert state["global_step"] == 4
    streamed = torch.load(sweep / "1" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert sorted(streamed["PretrainDataModule"]["stream_positions"]) == [0, 1]  # both ranks', gathered
    ranks = [
        [
            tuple(block)
            for line in (sweep / "1" / "probe" / f"blocks.rank{r}").read_text().splitlines()
            for block in json.loads(line)
        ]
        for r in (0, 1)
    ]
    assert [len(blocks) for blocks in ranks] == [16, 16]
    assert not set(ranks[0]) & set(ranks[1])
