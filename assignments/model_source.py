"""How a run's model is rebuilt later (the explorer, the app): recorded as names and literal arguments, never as
pickled code, and rebuilt only from modules a user can vouch for.

:func:`describe` turns ``model=`` (a class, a function, a ``functools.partial`` of one, an instance) into
``{"factory": "module:qualname", "args": [...], "kwargs": {...}}``, or None where that cannot be said (a lambda,
a class defined in a notebook cell, arguments that are not literals). :func:`rebuild` imports the factory back,
but only from this repository's ``models``, timm, ``torchvision.models`` or a module the user named
(``--model module:factory``); what it imports must be an ``nn.Module`` subclass or, from those libraries, a
function. A checkpoint naming anything else (``os:system``) is refused in one line.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import re

from torch import nn

TRUSTED = ("models", "timm", "torchvision.models")  # module trees whose factories the app may import by name
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class ModelSourceError(ValueError):
    """The run's model cannot be rebuilt from what it recorded; the message is one line saying what to pass."""


def _literal(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_literal(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _literal(v) for k, v in value.items())
    return False


def required_arguments(source) -> list[str] | None:
    """The names of the arguments ``source`` (a class or function) cannot be called without, or None when its
    signature cannot be read (a builtin)."""
    try:
        parameters = inspect.signature(source).parameters.values()
    except (TypeError, ValueError):
        return None
    return [p.name for p in parameters if p.default is p.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _name(obj) -> str | None:
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:  # a cell, a lambda, a local class
        return None
    return f"{module}:{qualname}"


def describe(source) -> dict | None:
    """What rebuilds ``source`` (see the module's docstring), or None."""
    args, kwargs = (), {}
    if isinstance(source, functools.partial):
        source, args, kwargs = source.func, source.args, dict(source.keywords)
    elif isinstance(source, nn.Module):  # an instance: its class, if that needs no arguments
        cls = type(source)
        if required_arguments(cls) != [] or cls.__module__.startswith("torch.nn"):  # nn.Sequential(...) etc.: its layers are not recorded
            return None
        source = cls
    name = _name(source)
    if name is None or not _literal(list(args)) or not _literal(kwargs):
        return None
    return {"factory": name, "args": list(args), "kwargs": kwargs}


def _trusted(module: str, named: str | None) -> bool:
    return module == named or any(module == t or module.startswith(t + ".") for t in TRUSTED)


def resolve(factory: str, named: str | None = None):
    """The object ``module:qualname`` names, imported only from a trusted module or the one the user ``named``;
    it must be an nn.Module subclass or, from a trusted module, a function."""
    module, _, qualname = factory.partition(":")
    if not (NAME.fullmatch(module) and NAME.fullmatch(qualname)):
        raise ModelSourceError(f"model {factory!r} is not module:name")
    if not _trusted(module, named):
        raise ModelSourceError(f"the run names its model {factory!r}; the app imports models only from "
                               f"{', '.join(TRUSTED)} or the module you name: pass --model {factory} if you trust it")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ModelSourceError(f"model {factory!r} cannot be imported here: {type(e).__name__}: {e}") from None
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)) and not inspect.isfunction(obj):
        raise ModelSourceError(f"model {factory!r} is a {type(obj).__name__}, not an nn.Module class or a function")
    return obj


def rebuild(record: dict | None, named: str | None = None) -> nn.Module:
    """The model ``record`` (from :func:`describe`) describes; with ``named`` (``--model module:factory``) that
    factory, called with the recorded arguments when the record names the same one."""
    if named is not None:
        factory = resolve(named, named.partition(":")[0])
        same = record is not None and record.get("factory") == named
        args, kwargs = (record["args"], record["kwargs"]) if same else ((), {})
    elif record is None:
        raise ModelSourceError("the run did not record how to build its model (a lambda, a class made in a notebook "
                               "cell, or an instance with arguments): pass --model module:factory, or "
                               "app(out, model=...) in Python")
    else:
        factory, args, kwargs = resolve(record["factory"]), record.get("args", []), record.get("kwargs", {})
        if not (_literal(args) and _literal(kwargs)):
            raise ModelSourceError(f"the run's model arguments are not literals: {args!r}, {kwargs!r}")
    try:
        model = factory(*args, **kwargs)
    except Exception as e:  # noqa: BLE001  (the user's constructor; its error is one line)
        raise ModelSourceError(f"building the model failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(model, nn.Module):
        raise ModelSourceError(f"the model factory returned a {type(model).__name__}, not an nn.Module")
    return model
