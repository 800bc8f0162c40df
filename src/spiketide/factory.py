"""Models built by Python code: their name in a run's config, and rebuilding them from a factory the user names.

A run whose model was built in Python (an own training loop with `tracking.RunTracker`, or `Trainer(model=...)`)
records `model` as "python:<reference>" ("python" alone when no reference is known), never a registry name.
Its weights are data (`torch.load(weights_only=True)`); the code that builds the module is not in the run
directory. The analysis commands rebuild it only from a factory named on their command line
(`--model-factory package.module:function` or `path/to/file.py:function`): user code is imported when, and
only when, the user names it; a reference recorded in a run directory is shown as a hint, never imported.

A factory is any callable taking no arguments that returns the `nn.Module` the run trained (a function, or a
class whose constructor needs no arguments), with the same structure and state_dict keys: e.g. the
`adapters.Stateless(...)` wrapper too, when the run's model was one.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

from spiketide.config import PYTHON_MODEL as PREFIX, is_python_model
from spiketide.errors import ConfigError

__all__ = ["PREFIX", "model_name", "is_python_model", "recorded_reference", "reference_of", "resolve", "build",
           "class_path"]

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def model_name(reference: str | None = None) -> str:
    """The config `model` of a model built in Python: "python:<reference>", or "python" when none is known."""
    return f"{PREFIX}:{reference}" if reference else PREFIX


def recorded_reference(name: str) -> str | None:
    """The factory reference a config's "python:<reference>" model records (shown to users, never imported)."""
    return name.split(":", 1)[1] if is_python_model(name) and ":" in name else None


def class_path(model: nn.Module) -> str:
    """`module.QualName` of a model's class, as checkpoints and config.json record it (`model_class`)."""
    return f"{type(model).__module__}.{type(model).__qualname__}"


def reference_of(factory: Callable[[], nn.Module]) -> str | None:
    """`module:qualname` of a function or class (a script run as `python file.py` gives `file.py:qualname`);
    None for what cannot be named (a lambda, a function defined inside another)."""
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    if not module or not qualname or "<" in qualname:
        return None
    if module == "__main__":
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        if not main:
            return None
        module = os.path.relpath(main) if not os.path.relpath(main).startswith("..") else main
    return f"{module}:{qualname}"


def _split(reference: str) -> tuple[str, str]:
    if not isinstance(reference, str) or reference.count(":") < 1:
        raise ConfigError(f"--model-factory {reference!r} is not a factory reference: write package.module:function "
                          "or path/to/file.py:function")
    where, _, attr = reference.rpartition(":")
    if not where.strip() or not _DOTTED.match(attr):
        raise ConfigError(f"--model-factory {reference!r} is not a factory reference: write package.module:function "
                          "or path/to/file.py:function (the part after ':' is a function or class name)")
    if not where.endswith(".py") and not _DOTTED.match(where):
        raise ConfigError(f"--model-factory {reference!r}: {where!r} is neither a dotted module name nor a .py file")
    return where, attr


def _import(where: str, reference: str):
    try:
        if not where.endswith(".py"):
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.append(os.getcwd())  # as `python -m` would: a module below the current folder is found
            return importlib.import_module(where)
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"--model-factory {reference!r}: there is no file {where}")
        name = f"_spiketide_factory_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # (dataclasses and pickling look a module up by name)
        spec.loader.exec_module(module)
        return module
    except ConfigError:
        raise
    except ModuleNotFoundError as exc:
        raise ConfigError(f"--model-factory {reference!r}: cannot import {where}: {exc} (is it installed, or run "
                          "from the folder that holds it?)") from None
    except Exception as exc:  # the user's module itself failed while importing
        raise ConfigError(f"--model-factory {reference!r}: importing {where} failed: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def resolve(reference: str) -> Callable[[], nn.Module]:
    """The callable `reference` names (`package.module:function` or `path/to/file.py:function`), imported now."""
    where, attr = _split(reference)
    obj = _import(where, reference)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"--model-factory {reference!r}: {where} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"--model-factory {reference!r}: {attr} is a {type(obj).__name__}, not a function or class")
    return obj


def build(reference: str, expect_class: str | None = None) -> nn.Module:
    """Call the factory `reference` names with no arguments and check that it returns an `nn.Module` (of the
    class `expect_class`, `module.QualName`, when given: the class a run recorded; its name is compared);
    ConfigError otherwise."""
    factory = resolve(reference)
    try:
        model = factory()
    except Exception as exc:
        raise ConfigError(f"--model-factory {reference!r}: calling it with no arguments failed: "
                          f"{_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model-factory {reference!r} returned a {type(model).__name__}, not a torch nn.Module")
    # Class names, not module paths, are compared: a class defined in a script run as `python file.py` is
    # recorded as __main__.Name, and the same file imported here is another module. The weights must fit too.
    if expect_class and type(model).__name__ != expect_class.rpartition(".")[2]:
        raise ConfigError(f"--model-factory {reference!r} built a {class_path(model)}, but the run's model is a "
                          f"{expect_class}; name the factory that builds the model the run trained")
    return model
