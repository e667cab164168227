"""Training throughput: the classic Trainer recipe (A), a bare PyTorch loop (B) and pretrainlab (C).

    python -m benchmarks.throughput            # the full table (sizes x block lengths, 3 repetitions)
    python -m benchmarks.throughput --quick    # model=small, block 384, 1 repetition: under 5 minutes
    python -m benchmarks.throughput --mode gpu # on a GPU (the default there): bf16, trainer=gpu, MFU

For each objective (masked: BERT, causal: Llama), size and block length, every variant trains the
same randomly initialised model (same seed), with the same tokenizer, the same built-in corpus,
batch size, block length, optimizer (AdamW, cosine schedule with 5% warm-up, clipping at 1.0)
and number of optimizer steps, one after another in this process:

* **A** transformers ``Trainer`` + ``DataCollatorForLanguageModeling``: one document per example,
  truncated to the block length, padded per batch (the Hugging Face tutorials' recipe);
* **B** a bare PyTorch loop over pretrainlab's packed blocks and batches, computing the same loss
  as C (the ceiling for C's loop: C/B is the framework's overhead);
* **C** pretrainlab, as a user runs it (``pretrainlab.train.train`` with ``trainer=cpu``), and
  **C fast** the same with ``trainer=cpu_fast`` (bf16 autocast + ``torch.compile``). On a GPU
  (``--mode gpu``): A and B in bf16 autocast, C with ``trainer=gpu`` uncompiled, C fast with it
  compiled, and each variant's model FLOPs utilisation.

Throughput is measured over the steps after a warm-up (compilation, allocator), as *useful*
tokens per second: tokens that are not padding (for MLM, the loss-bearing ones are reported
too). Validation loss is computed for every variant's final model by one function, on the same
validation batches. The last printed line is one JSON object with the ratios and the settings.
The run stops with an error if the comparison is not like for like (unequal step counts, data,
or initial weights).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from pretrainlab import config_dir
from pretrainlab.objectives.base import IGNORE

OBJECTIVES = {"masked": "bert", "causal": "llama"}
LR, BETAS, EPS, WEIGHT_DECAY, WARMUP, CLIP = 1e-3, (0.9, 0.98), 1e-6, 0.01, 0.05, 1.0
VAL_BATCHES = 8
# What the up-front message says a whole command takes on 2 idle CPU cores with an empty
# inductor cache: estimates, not yet measured end to end (a quick run on cores shared ~3x took
# 15 minutes up to the start-up measurements).
QUICK_MINUTES, FULL_MINUTES = 6, 28
STARTUP_KEYS = ("first_step_cold_s", "first_step_warm_s", "break_even_steps_cold", "break_even_steps_warm")


class ComparisonError(RuntimeError):
    """The variants did not get the same work: the ratios would mean nothing."""


# --------------------------------------------------------------------------- measurement


def now() -> float:
    """A host clock reading after the GPU's queued work is done (the step really ended)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


@dataclass
class Clock:
    """Per-step end times and per-batch token counts, in call order."""

    ends: list[float] = field(default_factory=list)
    useful: list[int] = field(default_factory=list)  # non-padding tokens per batch
    total: list[int] = field(default_factory=list)  # tokens per batch, padding included
    targets: list[int] = field(default_factory=list)  # loss-bearing tokens per batch
    first_ids: int | None = None  # a checksum of the first batch's token ids

    def count(self, batch: dict[str, torch.Tensor], pad_id: int) -> None:
        ids, labels = batch["input_ids"], batch["labels"]
        if self.first_ids is None:
            ids_cpu = ids.long().cpu()
            self.first_ids = int((ids_cpu * torch.arange(1, ids.numel() + 1).view_as(ids_cpu)).sum())
        mask = batch.get("attention_mask")
        self.useful.append(int(mask.sum()) if mask is not None else int((ids != pad_id).sum()))
        self.total.append(int(ids.numel()))
        self.targets.append(int((labels != IGNORE).sum()))

    def summary(self, warmup: int) -> dict[str, float]:
        """Rates over steps warmup+1 .. last (batches warmup .. last-1, 0-based)."""
        steps = len(self.ends)
        if steps <= warmup:
            raise ComparisonError(f"only {steps} steps for a warm-up of {warmup}")
        seconds = self.ends[-1] - self.ends[warmup - 1]
        useful = sum(self.useful[warmup:steps])
        return {
            "steps": steps,
            "s_per_step": seconds / (steps - warmup),
            "useful_tokens_per_s": useful / seconds,
            "target_tokens_per_s": sum(self.targets[warmup:steps]) / seconds,
            "padding_fraction": 1 - sum(self.useful[:steps]) / sum(self.total[:steps]),
        }


class PeakMemory:
    """Peak resident memory of this process during a block (Linux: VmHWM after clear_refs)."""

    def __enter__(self) -> PeakMemory:
        self.reset = _write("/proc/self/clear_refs", "5")
        self.peak_mib = float("nan")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc: Any) -> None:
        if torch.cuda.is_available():
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        elif self.reset:
            status = Path("/proc/self/status").read_text()
            kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
            self.peak_mib = kib / 1024


def _write(path: str, text: str) -> bool:
    try:
        Path(path).write_text(text)
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- shared set-up


@dataclass(frozen=True)
class Setting:
    objective: str
    size: str
    block: int
    batch: int
    steps: int


@dataclass(frozen=True)
class Mode:
    """How the variants run on one kind of machine.

    A and B run in bf16 autocast where ``bf16`` (as a GPU user of the recipe would set
    ``bf16=True``); C and C fast are pretrainlab's presets for the machine, given as overrides.
    """

    name: str
    bf16: bool
    c: tuple[str, ...]
    c_fast: tuple[str, ...]
    sizes: tuple[str, ...]
    blocks: tuple[int, ...]
    headline: tuple[str, int]
    batch: int
    steps: int
    warmup: int
    # Whole runs of every variant before the measured ones. On a GPU the first run in a process
    # pays for loading each kernel and choosing matmul algorithms per shape, and the classic
    # recipe meets a new padded length at nearly every step: measured on an H200, its first run
    # took 10-20 s for 60 steps, a later one 3.5 s.
    unmeasured_reps: int = 0


MODES = {
    "cpu": Mode(
        "cpu", False, ("trainer=cpu",), ("trainer=cpu_fast",),
        sizes=("tiny", "small"), blocks=(128, 384), headline=("small", 384), batch=16, steps=16, warmup=2,
    ),
    "gpu": Mode(
        "gpu", True, ("trainer=gpu", "trainer.compile=false"), ("trainer=gpu",),
        sizes=("base",), blocks=(512,), headline=("base", 512), batch=32, steps=60, warmup=10,
        unmeasured_reps=1,
    ),
}  # fmt: skip


def run_overrides(setting: Setting) -> list[str]:
    """What a user sets for this setting on the command line, end-of-run evaluation off."""
    return [
        f"objective={setting.objective}",
        f"model={setting.size}",
        f"data.block_size={setting.block}",
        f"data.batch_size={setting.batch}",
        "logger=none",
        "evaluation.cloze=false",
        "evaluation.continuation=false",
        "evaluation.probe=false",
        "evaluation.generation=false",
    ]


def compose_cfg(
    setting: Setting, out: Path, trainer: tuple[str, ...] = ("trainer=cpu",), extra: tuple[str, ...] = ()
) -> DictConfig:
    """The pretrainlab config a user would run for this setting (end-of-run evaluation off)."""
    overrides = [
        *run_overrides(setting),
        *trainer,
        f"trainer.max_steps={setting.steps}",
        f"trainer.val_check_interval={setting.steps}",
        f"trainer.limit_val_batches={VAL_BATCHES}",
        "seed=0",
        "~callbacks.progress_bar",
        f"paths.output_dir={out}",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return cfg


def fresh_module(cfg: DictConfig, datamodule: Any) -> Any:
    """pretrainlab's LightningModule with the benchmark's initial weights (seed 0, as train() seeds)."""
    from pretrainlab.train import build_objective

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return build_objective(cfg, datamodule)


def weights_checksum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


@torch.no_grad()
def validation_loss(model: torch.nn.Module, datamodule: Any) -> float:
    """Mean loss per target token of a transformers model on the first VAL_BATCHES validation batches
    (pretrainlab's collator, seeded by content: the same masks for every variant)."""
    model.eval()
    device = next(model.parameters()).device
    total = count = 0.0
    # A compiled body runs eagerly here: fp32, and no second (eval-mode) compilation to wait for.
    with torch.compiler.set_stance("force_eager"):
        for i, batch in enumerate(datamodule.val_dataloader()):
            if i == VAL_BATCHES:
                break
            inputs = {k: v.to(device) for k, v in batch.items() if not k.startswith("_")}
            targets = int((inputs["labels"] != IGNORE).sum())
            total += float(model(**inputs).loss) * targets
            count += targets
    return total / count


def cosine(optimizer: torch.optim.Optimizer, steps: int) -> Any:
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, int(WARMUP * steps), steps)


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer of pretrainlab's configure_optimizers, spelt out (fused on CUDA, as there)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    return torch.optim.AdamW(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR,
        betas=BETAS,
        eps=EPS,
        weight_decay=WEIGHT_DECAY,
        **fused,
    )


# --------------------------------------------------------------------------- the variants


def run_classic(
    setting: Setting, cfg: DictConfig, datamodule: Any, warmup: int, bf16: bool = False
) -> dict[str, Any]:
    """A: transformers Trainer, one document per example truncated to the block, padded per batch."""
    import datasets
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    from pretrainlab.data import packing

    # The train split's documents as pretrainlab tokenized them (same tokenizer, same eos).
    docs = datasets.load_from_disk(str(datamodule.tokenizer_dir / "docs"))["train"]
    documents = packing.truncate(docs, setting.block)
    tok = datamodule.tokenizer
    collator = DataCollatorForLanguageModeling(tok, mlm=setting.objective == "masked", mlm_probability=0.15)
    clock = Clock()

    def counted(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collator(examples)
        clock.count(batch, tok.pad_token_id)
        return batch

    class StepEnds(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.ends.append(now())

    model = fresh_module(cfg, datamodule).model
    start_weights = weights_checksum(model)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=setting.batch,
            max_steps=setting.steps,
            learning_rate=LR,
            adam_beta1=BETAS[0],
            adam_beta2=BETAS[1],
            adam_epsilon=EPS,
            weight_decay=WEIGHT_DECAY,
            warmup_steps=int(WARMUP * setting.steps),  # what get_cosine_schedule_with_warmup gets in B and C
            lr_scheduler_type="cosine",
            max_grad_norm=CLIP,
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            bf16=bf16,
            dataloader_num_workers=0,
            seed=0,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=documents, data_collator=counted, callbacks=[StepEnds()]
        )
        with PeakMemory() as memory:
            started = time.perf_counter()
            trainer.train()
            wall = now() - started
    return _result("A", clock, warmup, memory, wall, model, datamodule, start_weights)


def run_bare(
    setting: Setting,
    cfg: DictConfig,
    datamodule: Any,
    warmup: int,
    steps: int | None = None,
    bf16: bool = False,
) -> dict[str, Any]:
    """B: the same packed batches and loss as C, in a plain loop (AdamW, cosine, clipping;
    on a GPU, the batches are copied there as Lightning does, and bf16 autocast is on where C's is)."""
    steps = steps or setting.steps
    module = fresh_module(cfg, datamodule)
    start_weights = weights_checksum(module.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device)
    datamodule.plan_stream(cfg.seed, total_batches=steps)
    optimizer = adamw(module)
    schedule = cosine(optimizer, steps)
    clock = Clock()
    module.train()
    with PeakMemory() as memory:
        started = time.perf_counter()
        for cpu_batch in datamodule.train_dataloader():
            clock.count(cpu_batch, datamodule.tokenizer.pad_token_id)
            batch = {k: v.to(device, non_blocking=True) for k, v in cpu_batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = module(batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), CLIP)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            clock.ends.append(now())
        wall = now() - started
    return _result("B", clock, warmup, memory, wall, module.model, datamodule, start_weights)


# Clocks of the runs in progress, by key: StepClock is built by Hydra from the config, so it is
# handed its clock by name.
_CLOCKS: dict[str, Clock] = {}


class StepClock(pl.Callback):
    """Added to pretrainlab's own callbacks for C: step end times and token counts."""

    def __init__(self, key: str, pad_id: int) -> None:
        self.clock, self.pad_id = _CLOCKS[key], pad_id

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.clock.count(batch, self.pad_id)
        self.clock.ends.append(now())


def run_pretrainlab(
    name: str,
    setting: Setting,
    trainer: tuple[str, ...],
    datamodule: Any,
    warmup: int,
    steps: int | None = None,
) -> dict[str, Any]:
    """C: ``pretrainlab.train.train`` itself, as a user runs it, plus one callback reading the clock.

    ``build_objective`` is wrapped only to keep a handle on the trained module (and its initial
    weights, for the like-for-like check); the run's own seed gives the benchmark's weights.
    """
    from pretrainlab import train as train_module

    steps = steps or setting.steps
    key = f"{name}-{time.monotonic_ns()}"
    clock = _CLOCKS[key] = Clock()
    captured: dict[str, Any] = {}
    real_build = train_module.build_objective

    def build_objective(cfg: DictConfig, dm: Any) -> Any:
        module = real_build(cfg, dm)
        captured.update(module=module, start=weights_checksum(module.model))
        return module

    run_setting = Setting(setting.objective, setting.size, setting.block, setting.batch, steps)
    pad_id = datamodule.tokenizer.pad_token_id
    with tempfile.TemporaryDirectory() as tmp:
        extra = (
            f"+callbacks.clock._target_={__name__}.StepClock",
            f"+callbacks.clock.key={key}",
            f"+callbacks.clock.pad_id={pad_id}",
        )
        cfg = compose_cfg(run_setting, Path(tmp) / "run", trainer, extra)
        train_module.build_objective = build_objective
        try:
            with PeakMemory() as memory:
                started = time.perf_counter()
                train_module.train(cfg)
                wall = now() - started
        finally:
            train_module.build_objective = real_build
            del _CLOCKS[key]
    return _result(name, clock, warmup, memory, wall, captured["module"].model, datamodule, captured["start"])


def _result(
    name: str,
    clock: Clock,
    warmup: int,
    memory: PeakMemory,
    wall: float,
    model: Any,
    datamodule: Any,
    start: float,
) -> dict[str, Any]:
    return {
        "variant": name,
        **clock.summary(warmup),
        "peak_mib": memory.peak_mib,
        "wall_s": wall,
        "val_loss": validation_loss(model, datamodule),
        "start_weights": start,
        "first_batches": clock.useful[:3],
        "first_ids": clock.first_ids,
    }


# --------------------------------------------------------------------------- one setting


def measure(
    setting: Setting, mode: Mode, reps: int, warmup: int, fast: bool, same_time: bool, cache: Path
) -> dict[str, Any]:
    """Every variant, ``reps`` times each; medians; the like-for-like checks; model FLOPs."""
    from hydra.utils import get_class

    from pretrainlab.train import build_datamodule

    os.environ["PRETRAINLAB_CACHE"] = str(cache)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_cfg(setting, Path(tmp))
        datamodule = build_datamodule(cfg, get_class(cfg.objective._target_))
        datamodule.setup()
        reference = fresh_module(cfg, datamodule)  # also sets the collator on the datamodule
        predicted = cfg.objective.mask_probability if setting.objective == "masked" else 1.0
        per_token = flops_per_token(reference.model, setting, predicted)
        runs: dict[str, list[dict[str, Any]]] = {}
        variants: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("A", lambda: run_classic(setting, cfg, datamodule, warmup, bf16=mode.bf16)),
            ("B", lambda: run_bare(setting, cfg, datamodule, warmup, bf16=mode.bf16)),
            ("C", lambda: run_pretrainlab("C", setting, mode.c, datamodule, warmup)),
        ]
        if fast:  # two more warm-up steps: compilation
            variants.append(
                ("C_fast", lambda: run_pretrainlab("C_fast", setting, mode.c_fast, datamodule, warmup + 2))
            )
        for rep in range(mode.unmeasured_reps + reps):
            for name, run in variants:
                result = run()
                if rep >= mode.unmeasured_reps:
                    runs.setdefault(name, []).append(result)
        summary = {name: _median(results) for name, results in runs.items()}
        check_like_for_like(setting, summary, runs)
        peak = peak_flops() if mode.bf16 else None
        for row in summary.values():
            row["model_tflops"] = per_token * row["useful_tokens_per_s"] / 1e12
            row["mfu"] = row["model_tflops"] * 1e12 / peak if peak else None
        if same_time:
            budget = summary["A"]["wall_s"]
            for name, run_for in (
                ("B", lambda n: run_bare(setting, cfg, datamodule, 1, steps=n, bf16=mode.bf16)),
                ("C", lambda n: run_pretrainlab("C", setting, mode.c, datamodule, 1, steps=n)),
            ):
                n = max(2, int(budget / summary[name]["s_per_step"]))
                summary[name]["val_loss_same_time"] = run_for(n)["val_loss"]
                summary[name]["steps_same_time"] = n
            summary["A"]["val_loss_same_time"] = summary["A"]["val_loss"]
            summary["A"]["steps_same_time"] = setting.steps
    return {"setting": asdict(setting), "flops_per_token": per_token, "variants": summary}


def flops_per_token(model: torch.nn.Module, setting: Setting, predicted_share: float) -> float:
    """Model FLOPs of one training step per useful token (forward + backward), counted the usual
    way (Kaplan et al. 2020; PaLM, appendix B) so that MFU compares with published figures.

    6 per weight of every matrix a token passes through, plus 12 x layers x width x block for
    attention's scores and mixing (the full square, also for causal, as PaLM counts it).
    Embedding lookups cost nothing. The prediction head counts only at the positions the
    objective needs (all for causal; the masked 15% for MLM, which is the sparse head's work):
    padding and recomputed positions are not useful work.
    """
    config = model.config
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    embedding_ids = {id(p) for m in embeddings for p in m.parameters()}
    output = model.get_output_embeddings()
    skip = embedding_ids | ({id(output.weight)} if output is not None else set())
    body_ids = {id(p) for p in model.base_model.parameters()}
    matrices = [(id(p), p.numel()) for p in model.parameters() if p.ndim == 2 and id(p) not in skip]
    body = sum(n for i, n in matrices if i in body_ids)
    head = sum(n for i, n in matrices if i not in body_ids) + config.vocab_size * config.hidden_size
    layers = config.num_hidden_layers
    return 6 * body + 12 * layers * config.hidden_size * setting.block + 6 * head * predicted_share


def peak_flops() -> float | None:
    """Dense bf16 peak of the GPU in use (datasheet), for MFU; None where not known."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    known = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # SXM parts, without sparsity
    return next((peak for key, peak in known.items() if key in name), None)


def _median(results: list[dict[str, Any]]) -> dict[str, Any]:
    merged = dict(results[0])
    for key in ("s_per_step", "useful_tokens_per_s", "target_tokens_per_s", "peak_mib", "wall_s"):
        merged[key] = statistics.median(r[key] for r in results)
    merged["repetitions"] = len(results)
    return merged


def check_like_for_like(
    setting: Setting, summary: dict[str, Any], runs: dict[str, list[dict[str, Any]]]
) -> None:
    """Fail loudly when the variants did not do the same work."""
    steps = {name: [r["steps"] for r in results] for name, results in runs.items()}
    if any(s != setting.steps for counts in steps.values() for s in counts):
        raise ComparisonError(f"unequal step counts {steps} (wanted {setting.steps}) for {setting}")
    starts = {name: s["start_weights"] for name, s in summary.items()}
    if len({round(v, 6) for v in starts.values()}) != 1:
        raise ComparisonError(f"variants started from different weights {starts} for {setting}")
    packed = {name: summary[name]["first_batches"] for name in summary if name != "A"}
    first = {name: summary[name]["first_ids"] for name in packed}
    if len(set(first.values())) != 1:
        raise ComparisonError(f"B and C started from different batches (checksums {first}) for {setting}")
    full = setting.batch * setting.block
    if any(t != full for name in packed for t in summary[name]["first_batches"]):
        raise ComparisonError(f"packed batches are not full ({packed}, expected {full} tokens) for {setting}")


# --------------------------------------------------------------------------- start-up costs


def preparation_times(setting: Setting, cache: Path, reps: int) -> dict[str, float]:
    """Data preparation (corpus -> tokenizer -> tokenized documents -> blocks): cold, then cached."""
    from hydra.utils import get_class

    from pretrainlab.train import build_datamodule

    def prepare(folder: Path) -> float:
        os.environ["PRETRAINLAB_CACHE"] = str(folder)
        cfg = compose_cfg(setting, folder / "run")
        started = time.perf_counter()
        datamodule = build_datamodule(cfg, get_class(cfg.objective._target_))
        datamodule.setup()
        return time.perf_counter() - started

    with tempfile.TemporaryDirectory() as cold:
        cold_s = prepare(Path(cold))
        cached_s = statistics.median(prepare(Path(cold)) for _ in range(reps))
    os.environ["PRETRAINLAB_CACHE"] = str(cache)
    return {"cold_prep_s": cold_s, "cached_prep_s": cached_s}


def first_step_seconds(
    setting: Setting, cache: Path, *extra: str, env: dict[str, str] | None = None
) -> dict[str, float]:
    """From starting ``pretrainlab-train`` (a new process) to the end of its first optimizer step,
    with a warm data cache, and where that time goes (``env``: more environment variables)."""
    with tempfile.TemporaryDirectory() as tmp:
        stamp = Path(tmp) / "first_step.json"
        command = [
            sys.executable,
            "-m",
            "pretrainlab.train",
            *run_overrides(setting),
            "trainer.max_steps=1",
            f"hydra.run.dir={tmp}/run",
            # a new process imports this file as a module, not as __main__
            "+callbacks.first_step._target_=benchmarks.throughput.FirstStepStamp",
            f"+callbacks.first_step.path={stamp}",
            *extra,
        ]
        root = Path(__file__).resolve().parents[1]
        path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PRETRAINLAB_CACHE": str(cache), "PYTHONPATH": path, **(env or {})}
        started = time.time()
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise ComparisonError(f"pretrainlab-train failed: {result.stderr[-1500:]}")
        times = json.loads(stamp.read_text())
    setup_end = times.get("validation_start", times["train_start"])
    return {
        "first_step_s": times["first_step"] - started,
        "start_to_setup_done_s": setup_end - started,  # imports, config, data, model
        "initial_validation_s": times["train_start"] - setup_end,
        "train_start_to_first_step_s": times["first_step"] - times["train_start"],
    }


def compile_costs(setting: Setting, cache: Path, mode: Mode, plain: dict[str, float]) -> dict[str, Any]:
    """C fast's start-up, cold and warm: ``pretrainlab-train`` with the C fast preset in a new
    process, first with an empty inductor cache (``TORCHINDUCTOR_CACHE_DIR`` set to a new
    folder: what a fresh machine pays), then again with the same folder (what every later run
    pays). ``plain`` is C's start-up (no compilation) from ``first_step_seconds``."""
    with tempfile.TemporaryDirectory() as inductor:
        env = {"TORCHINDUCTOR_CACHE_DIR": inductor}
        cold = first_step_seconds(setting, cache, *mode.c_fast, env=env)
        warm = first_step_seconds(setting, cache, *mode.c_fast, env=env)
    return {"objective": setting.objective, "C": plain, "C_fast_cold": cold, "C_fast_warm": warm}


def break_even(extra_s: float, s_per_step: float, s_per_step_fast: float) -> float | None:
    """Optimizer steps after which a run that starts ``extra_s`` later but steps faster has
    caught up in wall time: 1 + extra / (saving per step); None when it never does."""
    saving = s_per_step - s_per_step_fast
    if extra_s <= 0:
        return 1.0
    return None if saving <= 0 else 1 + extra_s / saving


def startup_rows(
    costs: dict[str, Any], results: list[dict[str, Any]], headline: tuple[str, int]
) -> dict[str, Any]:
    """Per variant: first step cold and warm, compile time, steady rate, and C fast's break-even
    step count against C (from the same command start, compilation included)."""
    variants = next(
        r["variants"]
        for r in results
        if (r["setting"]["objective"], r["setting"]["size"], r["setting"]["block"])
        == (costs["objective"], *headline)
    )
    c, fast = variants["C"], variants["C_fast"]
    plain, cold, warm = costs["C"], costs["C_fast_cold"], costs["C_fast_warm"]

    def compile_s(run: dict[str, float]) -> float:
        # C fast's first step beyond a steady one, less C's own beyond-steady first step.
        own = plain["train_start_to_first_step_s"] - c["s_per_step"]
        return run["train_start_to_first_step_s"] - fast["s_per_step"] - max(own, 0.0)

    rows = {
        "C": {
            "first_step_cold_s": plain["first_step_s"],
            "first_step_warm_s": plain["first_step_s"],
            "compile_cold_s": 0.0,
            "compile_warm_s": 0.0,
            "s_per_step": c["s_per_step"],
            "useful_tokens_per_s": c["useful_tokens_per_s"],
        },
        "C_fast": {
            "first_step_cold_s": cold["first_step_s"],
            "first_step_warm_s": warm["first_step_s"],
            "compile_cold_s": compile_s(cold),
            "compile_warm_s": compile_s(warm),
            "s_per_step": fast["s_per_step"],
            "useful_tokens_per_s": fast["useful_tokens_per_s"],
            "break_even_steps_cold": break_even(
                cold["first_step_s"] - plain["first_step_s"], c["s_per_step"], fast["s_per_step"]
            ),
            "break_even_steps_warm": break_even(
                warm["first_step_s"] - plain["first_step_s"], c["s_per_step"], fast["s_per_step"]
            ),
        },
    }
    return {"objective": costs["objective"], "variants": rows, "raw": costs}


def startup_table(rows: list[dict[str, Any]]) -> str:
    """The start-up costs of compilation, one row per objective and variant."""
    header = (
        "| objective | variant | first step, empty inductor cache (s) | first step, warm (s) "
        "| compile cold / warm (s) | s/step | useful tok/s | break-even vs C, cold / warm (steps) |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|\n"
    )

    def steps(value: float | None) -> str:
        return "never" if value is None else f"{math.ceil(value)}"

    lines = []
    for row in rows:
        for name, v in row["variants"].items():
            even = (
                f"{steps(v['break_even_steps_cold'])} / {steps(v['break_even_steps_warm'])}"
                if "break_even_steps_cold" in v
                else ""
            )
            lines.append(
                f"| {row['objective']} | {name} | {v['first_step_cold_s']:.1f} "
                f"| {v['first_step_warm_s']:.1f} | {v['compile_cold_s']:.1f} / {v['compile_warm_s']:.1f} "
                f"| {v['s_per_step']:.3f} "
                f"| {v['useful_tokens_per_s']:,.0f} | {even} |"
            )
    return header + "\n".join(lines)


class FirstStepStamp(pl.Callback):
    """Wall-clock times of the initial validation, the start of training and the end of the
    first optimizer step (for ``first_step_seconds``)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.times: dict[str, float] = {}

    def on_validation_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.times.setdefault("validation_start", time.time())

    def on_train_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.times.setdefault("train_start", time.time())

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == 1 and "first_step" not in self.times:
            self.times["first_step"] = time.time()
            self.path.write_text(json.dumps(self.times))


# --------------------------------------------------------------------------- report


def table(results: list[dict[str, Any]]) -> str:
    header = (
        "| objective | size | block | variant | useful tok/s | loss tok/s | padding | s/step | peak MiB "
        "| val loss (same steps) | val loss (same time) | vs A | vs B |\n"
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for r in results:
        s, v = r["setting"], r["variants"]
        for name, m in v.items():
            same_time = m.get("val_loss_same_time")
            same_time_cell = "" if same_time is None else f"{same_time:.4f} ({m['steps_same_time']} steps)"
            rows.append(
                f"| {s['objective']} | {s['size']} | {s['block']} | {name} | {m['useful_tokens_per_s']:,.0f} "
                f"| {m['target_tokens_per_s']:,.0f} | {m['padding_fraction']:.1%} | {m['s_per_step']:.3f} "
                f"| {m['peak_mib']:,.0f} | {m['val_loss']:.4f} "
                f"| {same_time_cell} "
                f"| {m['useful_tokens_per_s'] / v['A']['useful_tokens_per_s']:.2f} "
                f"| {m['useful_tokens_per_s'] / v['B']['useful_tokens_per_s']:.2f} |"
            )
    return header + "\n".join(rows)


def ratio(results: list[dict[str, Any]], objective: str, size: str, block: int, num: str, den: str) -> float:
    for r in results:
        s = r["setting"]
        if (s["objective"], s["size"], s["block"]) == (objective, size, block) and num in r["variants"]:
            v = r["variants"]
            return v[num]["useful_tokens_per_s"] / v[den]["useful_tokens_per_s"]
    return math.nan


def main(argv: list[str] | None = None) -> None:
    """Run the grid, print the table, and end with one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="headline setting, 1 repetition (< 5 min)")
    parser.add_argument(
        "--mode",
        choices=sorted(MODES),
        default="gpu" if torch.cuda.is_available() else "cpu",
        help="variants' precision and presets, and the default grid (default: gpu where CUDA is)",
    )
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--no-fast", action="store_true", help="skip C fast (trainer=cpu_fast / gpu)")
    parser.add_argument("--sizes", nargs="+", help="model sizes (cpu: tiny small; gpu: base)")
    parser.add_argument("--blocks", nargs="+", type=int, help="block lengths (cpu: 128 384; gpu: 512)")
    parser.add_argument("--out", type=Path, help="also append each setting's result to this JSON-lines file")
    parser.add_argument(
        "--cache", default=os.environ.get("PRETRAINLAB_CACHE", str(Path.home() / ".cache/pretrainlab"))
    )
    args = parser.parse_args(argv)
    started = time.time()
    mode = MODES[args.mode]
    headline = mode.headline
    sizes, blocks = ([headline[0]], [headline[1]]) if args.quick else (list(mode.sizes), list(mode.blocks))
    sizes, blocks = args.sizes or sizes, args.blocks or blocks
    reps = args.reps or (1 if args.quick else 3)
    steps = args.steps or (mode.steps // 2 if args.quick else mode.steps)
    batch = args.batch or mode.batch
    warmup = mode.warmup
    cache = Path(args.cache).expanduser()
    fast_objectives = [] if args.no_fast else (["causal"] if args.quick else list(OBJECTIVES))
    minutes = f"quick: about {QUICK_MINUTES}" if args.quick else f"full grid: about {FULL_MINUTES}"
    print(
        f"# {minutes} minutes on 2 idle CPU cores (longer on busy ones), with an empty inductor cache",
        file=sys.stderr,
        flush=True,
    )
    # Every run starts from an empty inductor cache (unless the user set one): C fast's
    # in-process runs pay a fresh machine's compilation (outside their measured steps), and
    # the numbers do not depend on what earlier runs left in the user's cache.
    inductor = None
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        inductor = tempfile.TemporaryDirectory(prefix="benchmark-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor.name
    results = []
    for objective in OBJECTIVES:
        for size in sizes:
            for block in blocks:
                setting = Setting(objective, size, block, batch, steps)
                print(f"# {setting}", file=sys.stderr, flush=True)
                fast = not args.no_fast and (size, block) == headline
                same_time = not args.quick and mode.name == "cpu"
                results.append(measure(setting, mode, reps, warmup, fast, same_time, cache))
                if args.out:
                    with args.out.open("a") as out:
                        out.write(json.dumps(results[-1]) + "\n")
    start_setting = Setting("causal", "small", 384, batch, steps)
    prep = preparation_times(start_setting, cache, reps=3)
    first_step = first_step_seconds(start_setting, cache, *mode.c)
    startup = [
        startup_rows(
            compile_costs(
                Setting(objective, *headline, batch, steps),
                cache,
                mode,
                first_step
                if objective == "causal"
                else first_step_seconds(Setting(objective, *headline, batch, steps), cache, *mode.c),
            ),
            results,
            headline,
        )
        for objective in fast_objectives
    ]
    if inductor is not None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        inductor.cleanup()
    # --quick leaves out the second start-up measurement (about 25 s) to stay under 5 minutes.
    first_step_validated = (
        None
        if args.quick
        else first_step_seconds(start_setting, cache, *mode.c, "trainer.validate_at_start=true")
    )
    print(table(results))
    if startup:
        print()
        print(startup_table(startup))
        print("(first step: from starting pretrainlab-train to the end of its first optimizer step; cold: an")
        print(" empty TORCHINDUCTOR_CACHE_DIR, warm: the same folder again; break-even: the step after which")
        print(" C fast's run, compilation included, has caught up with C's in wall time)")
    summary = {
        "c_over_a_masked": ratio(results, "masked", *headline, "C", "A"),
        "c_over_a_causal": ratio(results, "causal", *headline, "C", "A"),
        "c_over_b_masked": ratio(results, "masked", *headline, "C", "B"),
        "c_over_b_causal": ratio(results, "causal", *headline, "C", "B"),
        "c_fast_over_a_masked": ratio(results, "masked", *headline, "C_fast", "A"),
        "c_fast_over_a_causal": ratio(results, "causal", *headline, "C_fast", "A"),
        "c_over_a_masked_128": ratio(results, "masked", "small", 128, "C", "A"),
        "c_over_a_causal_128": ratio(results, "causal", "small", 128, "C", "A"),
        "mfu": {
            f"{r['setting']['objective']}/{name}": v["mfu"]
            for r in results
            for name, v in r["variants"].items()
            if v["mfu"] is not None and (r["setting"]["size"], r["setting"]["block"]) == headline
        },
        "first_step_s": first_step["first_step_s"],
        "startup": startup,
        **{
            f"{key}_{row['objective']}": row["variants"]["C_fast"][key]
            for row in startup
            for key in STARTUP_KEYS
        },
        "first_step_breakdown": first_step,
        "first_step_s_with_initial_validation": first_step_validated and first_step_validated["first_step_s"],
        "first_step_with_initial_validation_breakdown": first_step_validated,
        **prep,
        "settings": {
            "mode": mode.name,
            "quick": args.quick,
            "sizes": sizes,
            "blocks": blocks,
            "batch": batch,
            "steps": steps,
            "warmup_steps": warmup,
            "repetitions": reps,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "total_s": round(time.time() - started, 1),
        },
        "results": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
