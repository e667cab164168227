"""Which code a saved config may name: the allow-list that makes opening a shared run folder safe.

``pretrainlab-reproduce`` and ``pretrainlab-eval`` read ``RUN_DIR/.hydra/config.yaml``, and Hydra
calls whatever its ``_target_`` keys name. Run folders get copied between people and machines, so
``{_target_: torch.load, f: payload.pt, weights_only: false}`` in a callback would run a pickle
payload. Before anything is instantiated the whole saved config is checked here:

* every ``_target_`` (at any depth, in lists, ``_args_``, ``_partial_`` or not) must be a plain
  dotted name under :data:`ALLOWED_PREFIXES` that resolves to a class defined there (a function,
  or a class merely imported into such a module, is refused; transformers' scheduler factories
  ``transformers.optimization.get_*schedule*`` are the one kind of function allowed);
* an interpolation may only use value resolvers (:data:`SAFE_RESOLVERS`) and no dict literal,
  since ``${oc.create:...}`` or ``${oc.select:missing,{_target_: ...}}`` builds a ``_target_``
  node that a look at the file alone would not see;
* the file may hold no ``hydra`` node (Hydra's own launcher, callbacks and ``logging`` settings,
  which name code too) and no ``defaults`` list: Hydra never saves either into ``config.yaml``.

The module imports neither torch nor Lightning: the static checks run first, and only names that
pass them are imported (from the allowed, installed packages) to see what they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# Where the configs of pretrainlab (conf/) take their classes from.
ALLOWED_PREFIXES = (
    "pretrainlab",
    "torch.optim",
    "transformers.optimization",
    "pytorch_lightning",
    "lightning",
)
# OmegaConf resolvers that return a value (a string, or a node of the same config) and never parse
# text into a new config node (oc.create, oc.decode do).
SAFE_RESOLVERS = frozenset(
    {"hydra", "now", "oc.env", "oc.select", "oc.dict.keys", "oc.dict.values", "coalesce"}
)
_SCHEDULERS = "transformers.optimization"
# Modules a resolved class may be defined in: Lightning keeps some of its classes in lightning_fabric.
_DEFINING_MODULES = (*ALLOWED_PREFIXES, "lightning_fabric")


class UntrustedConfigError(ValueError):
    """A saved config names code outside the allow-list; printed as one ``error:`` line."""


def require_trusted(cfg: DictConfig | dict[str, Any], source: Path | str) -> None:
    """Raise :class:`UntrustedConfigError` (``<source>: <key>... is not allowed (...)``) unless every
    piece of code the config can make Hydra call is on the allow-list. Call it before anything
    from the config is imported or instantiated: that is the whole point."""
    problem = untrusted_problem(cfg)
    if problem is not None:
        raise UntrustedConfigError(f"{source}: {problem}")


def require_trusted_file(path: Path) -> str:
    """Read a saved config, check it (:func:`require_trusted`) and return the text that was checked,
    so a caller can use exactly those bytes (the file may change after the check)."""
    text = path.read_text(encoding="utf-8")
    try:
        cfg = OmegaConf.create(text)
    except Exception as err:  # noqa: BLE001 - yaml and omegaconf raise several kinds
        raise UntrustedConfigError(f"{path}: not a readable config ({type(err).__name__})") from err
    if not isinstance(cfg, DictConfig):
        raise UntrustedConfigError(f"{path}: not a config (a mapping of settings)")
    require_trusted(cfg, path)
    return text


def untrusted_problem(cfg: DictConfig | dict[str, Any]) -> str | None:
    """The first thing in ``cfg`` outside the allow-list, as ``<key>: <why>``; None when all is allowed."""
    tree = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig | ListConfig) else cfg
    for key in ("hydra", "defaults"):
        if isinstance(tree, dict) and key in tree:
            return f"{key}: not allowed in a saved run config (Hydra's own settings name code too)"
    targets: list[tuple[str, str]] = []
    problem = _static_problem(tree, "", targets)
    if problem is not None:
        return problem
    for where, target in targets:  # every name passed the prefix check: importing it is safe
        problem = _resolved_problem(target)
        if problem is not None:
            return f"{where}={target} {problem}"
    return None


def allowed_description() -> str:
    """The allow-list in words, for the error message."""
    return f"allowed: classes under {', '.join(ALLOWED_PREFIXES)}"


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _static_problem(node: Any, path: str, targets: list[tuple[str, str]]) -> str | None:
    """Walk the raw tree: names checked by prefix, interpolations by grammar; no import happens."""
    if isinstance(node, dict):
        if "_target_" in node:
            target = node["_target_"]
            if not isinstance(target, str) or "${" in target or not _has_allowed_prefix(target):
                shown = target if isinstance(target, str) else repr(target)
                return f"{_join(path, '_target_')}={shown} is not allowed ({allowed_description()})"
            targets.append((_join(path, "_target_"), target))
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        if isinstance(node, str) and "${" in node:
            problem = _interpolation_problem(node)
            if problem is not None:
                return f"{path}={node}: {problem}"
        return None
    for key, child in items:
        if isinstance(key, str) and "${" in key:
            return f"{_join(path, key)}: an interpolation in a key is not allowed"
        problem = _static_problem(child, _join(path, key), targets)
        if problem is not None:
            return problem
    return None


def _has_allowed_prefix(name: str) -> bool:
    return any(name.startswith(prefix + ".") for prefix in ALLOWED_PREFIXES)


def _interpolation_problem(text: str) -> str | None:
    """Resolvers other than :data:`SAFE_RESOLVERS`, or a dict literal, anywhere in an interpolation."""
    from omegaconf import grammar_parser
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser as Parser

    try:
        tree = grammar_parser.parse(text)
    except Exception:  # noqa: BLE001 - not parseable: OmegaConf would refuse it as well
        return "not a valid interpolation"
    stack = [tree]
    while stack:
        ctx = stack.pop()
        if isinstance(ctx, Parser.ResolverNameContext) and ctx.getText() not in SAFE_RESOLVERS:
            return (
                f"resolver {ctx.getText()} is not allowed in a saved run config "
                f"(allowed: {', '.join(sorted(SAFE_RESOLVERS))})"
            )
        if isinstance(ctx, Parser.DictContainerContext):
            return "a dict literal in an interpolation is not allowed in a saved run config"
        stack.extend(getattr(ctx, "children", None) or [])
    return None


def _resolved_problem(target: str) -> str | None:
    """What Hydra's ``instantiate`` would call for ``target``, checked: a class defined under an
    allowed prefix (a name like ``pretrainlab.utils.os.system`` reaches ``os.system``)."""
    from hydra._internal.utils import _locate  # what hydra.utils.instantiate resolves names with

    try:
        obj = _locate(target)
    except Exception as err:  # noqa: BLE001 - ImportError, AttributeError, anything the import raises
        return f"cannot be imported ({type(err).__name__}; {allowed_description()})"
    module = getattr(obj, "__module__", None) or ""
    defined_here = any(module == p or module.startswith(p + ".") for p in _DEFINING_MODULES)
    if isinstance(obj, type) and defined_here:
        return None
    name = getattr(obj, "__name__", "")
    if module == _SCHEDULERS and callable(obj) and name.startswith("get_") and "schedule" in name:
        return None
    what = f"{module}.{name}" if module and name else f"a {type(obj).__name__}"
    kind = "is not a class" if defined_here or not isinstance(obj, type) else "is defined elsewhere"
    return f"is not allowed ({what} {kind}; {allowed_description()})"
