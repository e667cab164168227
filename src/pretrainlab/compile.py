"""``torch.compile`` for training (``trainer.compile=true``, on in ``trainer=cpu_fast`` and ``trainer=gpu``).

What is compiled, and why so (measured on 2 CPU cores, ``model=small``, block 384, bf16-mixed;
``benchmarks/README.md`` has the figures):

* **The repeated transformer block, once** (regional compilation). Every layer of a list of
  identical blocks (``LlamaModel.layers``, ``BertEncoder.layer``, GPT-2's ``h``, T5's ``block``)
  is compiled in place with the same code object; with dynamo's default of treating module
  parameters as inputs, the four layers of ``model=small`` share one graph instead of being
  traced, lowered and compiled to C++ as one four-times-larger body. Embeddings, masks, the
  final norm, heads and losses run eagerly (the sparse MLM head's changing number of rows would
  recompile anyway). A body without such a list is compiled whole.
* **Only the training call.** In training (module in train mode, gradients on) the body runs
  its compiled blocks; in evaluation mode or without gradients (validation, the end-of-run
  evaluation, generation with its growing KV cache) it runs eagerly
  (``torch.compiler.set_stance("force_eager")``), so validation never compiles a second
  (inference) graph and generation never recompiles per decoded length.
* **No KV cache in training.** transformers' decoders build a ``DynamicCache`` whenever
  ``config.use_cache`` is on, also in training, where nothing reads it; the cache's state would
  be guarded per layer and split the one block graph into one per layer. Training calls get
  ``use_cache=False`` (unless the caller asked for a cache).
* **Compiled once per shape.** Training batches all have one shape (the last partial batch is
  dropped by ``StreamBatchSampler``); a shape that does change marks itself dynamic after its
  first recompilation (dynamo's default).
* **A persistent inductor cache.** ``TORCHINDUCTOR_CACHE_DIR`` is set to
  ``<paths.cache_dir>/inductor`` unless the user set it, so a later run of the same model loads
  the compiled kernels instead of generating and building them with the C++ compiler again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# The backend ``compile_for_training`` uses; tests swap in "aot_eager" (the same dynamo graphs
# and guards, without generating and building C++).
BACKEND = "inductor"
# What compilation adds to the first training step at model=small, block 384 (first step of
# trainer=cpu_fast minus trainer=cpu's, from the command start), measured by
# `python -m benchmarks.throughput --quick` on a quiet 2-core CPU: with an empty inductor cache,
# and with this model's kernels cached. Per distinct block class (one graph, forward and backward).
COLD_COMPILE_S = 21
WARM_COMPILE_S = 3
RECORD = "pretrainlab_compiled.json"

# The value pretrainlab last put in TORCHINDUCTOR_CACHE_DIR: a later run in the same process
# may move it; a value the user set is never changed.
_ours: str | None = None


def use_inductor_cache(cache_dir: str | Path) -> Path:
    """Keep inductor's compiled kernels under ``<cache_dir>/inductor`` (paths.cache_dir) unless
    ``TORCHINDUCTOR_CACHE_DIR`` is set by the user: by default they go to a folder under /tmp
    that a fresh machine or a reboot empties, and every run then pays the cold compilation."""
    global _ours
    current = os.environ.get(CACHE_ENV)
    if current and current != _ours:
        return Path(current)
    folder = Path(cache_dir).expanduser().resolve() / "inductor"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = _ours = str(folder)
    return folder


def repeated_blocks(body: nn.Module) -> list[nn.Module]:
    """The layers of every ``nn.ModuleList`` of one block class (outermost lists only): what
    regional compilation compiles, one graph per class."""
    blocks: list[nn.Module] = []
    taken: list[str] = []
    for name, module in body.named_modules():
        if any(name.startswith(prefix) for prefix in taken):
            continue
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            classes = {type(layer) for layer in module}
            if len(classes) == 1 and any(True for _ in module[0].parameters()):
                blocks.extend(module)
                taken.append(f"{name}.")
    return blocks


def compiled_units(body: nn.Module) -> list[nn.Module]:
    """The modules ``compile_for_training`` compiles: the repeated blocks, or the body."""
    return repeated_blocks(body) or [body]


def _takes_use_cache(module: nn.Module) -> bool:
    try:
        return "use_cache" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def compile_for_training(body: nn.Module, cache_dir: str | Path | None = None) -> list[nn.Module]:
    """Compile ``body`` (a transformers base model) in place for training; returns the compiled
    units. Parameter names, checkpoints and the export are unchanged.

    ``body._compiled_call_impl`` becomes a dispatcher (``nn.Module.__call__`` calls it): training
    calls run the compiled blocks without a KV cache, every other call runs eagerly.
    """
    if cache_dir is not None:
        use_inductor_cache(cache_dir)
    units = compiled_units(body)
    for unit in units:
        if unit is not body:
            unit.compile(backend=BACKEND)
    whole = torch.compile(body._call_impl, backend=BACKEND) if units == [body] else body._call_impl
    no_cache = _takes_use_cache(body)
    folder, key = _announce(body, units)
    first_call: list[float] = []  # when the first training call started

    def call(*args: Any, **kwargs: Any) -> Any:
        if body.training and torch.is_grad_enabled():
            if len(first_call) == 1:  # the second training step: the first one (and its compile) is done
                _record(folder, key, time.perf_counter() - first_call[0])
            if len(first_call) < 2:
                first_call.append(time.perf_counter())
            if no_cache and kwargs.get("use_cache") is None:
                kwargs["use_cache"] = False
            return whole(*args, **kwargs)
        with torch.compiler.set_stance("force_eager"):
            return body._call_impl(*args, **kwargs)

    body._compiled_call_impl = call
    return units


def _model_key(body: nn.Module, units: list[nn.Module]) -> str:
    config = getattr(body, "config", None)
    text = json.dumps(
        {
            "config": config.to_json_string(use_diff=False) if config is not None else repr(body),
            "units": sorted({type(u).__name__ for u in units}),
            "torch": torch.__version__,
            "backend": BACKEND,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _announce(body: nn.Module, units: list[nn.Module]) -> tuple[Path, str]:
    """One log line: what is compiled and what the first step will wait for (cold or warm)."""
    kinds = sorted({type(u).__name__ for u in units})
    what = (
        f"{len(units)} x {'/'.join(kinds)} as {len(kinds)} graph{'s' if len(kinds) > 1 else ''}"
        if units != [body]
        else f"the whole {type(body).__name__}"
    )
    folder = Path(os.environ.get(CACHE_ENV) or _default_cache())
    record = _read_record(folder)
    key = _model_key(body, units)
    threads = torch.get_num_threads()
    if key in record:
        expect = f"about {record[key]:.0f} s last time: this model's kernels are in the cache"
    else:
        expect = (
            f"about {COLD_COMPILE_S * len(kinds)} s on 2 CPU cores with an empty cache "
            f"(about {WARM_COMPILE_S * len(kinds)} s once cached)"
        )
    log.info(
        "compile: %s (%s, %d threads); the first training step waits for it: %s. Inductor cache: %s "
        "(whether it pays off against trainer=cpu here: python -m benchmarks.throughput --quick)",
        what,
        BACKEND,
        threads,
        expect,
        folder,
    )
    return folder, key


def _default_cache() -> str:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return default_cache_dir()


def _read_record(folder: Path) -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in json.loads((folder / RECORD).read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def _record(folder: Path, key: str, seconds: float) -> None:
    """Remember that this model's kernels are now in the inductor cache (and how long its first
    compiled step took), for the next run's start-up message."""
    record = _read_record(folder)
    record[key] = round(seconds, 1)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{RECORD}.{os.getpid()}"
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(folder / RECORD)
    except OSError:
        pass


def compile_counts() -> dict[str, int]:
    """Dynamo's counts so far in this process: frames compiled (first compilations and
    recompilations) and distinct graphs. Equal before and after a stretch of work: nothing
    was compiled in it."""
    from torch._dynamo.utils import counters

    return {"frames": int(counters["frames"]["total"]), "graphs": int(counters["stats"]["unique_graphs"])}
