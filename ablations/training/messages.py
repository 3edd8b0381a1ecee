"""Bad input as one line: the option as the user typed it, the value, and what would be valid.

jsonargparse reports a refused value as a nested report of union subtypes and parser keys; these functions read
the line a user needs out of it (``one_line``), name the option a typo most likely meant (``with_closest_option``)
and say which ``--config`` file a YAML error is in (``error_line``, which puts them together).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from lightning_modules.ranges import DESCRIPTIONS

from ..identity import flat


def invalid(option: str, value: Any, valid: str) -> str:
    """The one line for a bad value: the option as typed, the value, and what would be valid."""
    return f"--{option} {value} is not valid; expected {valid}"


LINKED = {"data.init_args.seed": "seed_everything"}  # set through the option a user types (AblateCLI's links)

PLAIN_TYPES = {"bool": "true or false", "NoneType": "null", "float": "a number", "int": "an integer",
               "str": "a string", "tuple": "a list", "list": "a list", "dict": "a mapping"}


def out_of_range(text: str) -> str | None:
    """``--<option> <value> is not valid; expected <what>`` from jsonargparse's report of a value that the option's
    type refused (a range of ``lightning_modules.ranges``, a Literal, a bool, a number that does not parse), else
    None. The innermost ``Parser key`` is the option; what follows it says what was expected and given."""
    keys = re.findall(r'Parser key "([^"]+)"', text)
    if not keys or "is not accepted" in text:
        return None
    lines = text[text.rindex('Parser key "'):].splitlines()
    depth = len(text[:text.rindex('Parser key "')].rsplit("\n", 1)[-1])  # the innermost key's indentation
    block = [line for line in lines[1:] if line.strip()]
    cut = next((i for i, line in enumerate(block) if len(line) - len(line.lstrip()) <= depth), len(block))
    inner = "\n".join(block[:cut])
    expected = []
    for kind, literal, plain in re.findall(r"Not of type (\w+)|Expected a typing\.Literal\[(.*?)\]|Expected a <class '(\w+)'>",
                                           inner):
        if kind:
            expected.append(DESCRIPTIONS.get(kind, kind))
        elif literal:
            expected.append("one of " + ", ".join(c.strip(" '\"") for c in literal.split(",")))
        else:
            expected.append(PLAIN_TYPES.get(plain, plain))
    if not expected:
        return None
    given = (re.findall(r"^\s*Given value: (.*)$", inner, re.M) or re.findall(r"Got value: (.*)$", inner, re.M)
             or re.findall(r"Not of type \w+: (.+?) (?:does not conform|not an? (?:number|integer))", inner)
             or re.findall(r": '(.*)'$", inner, re.M)
             or ["?"])[0]
    given = re.sub(r"^NestedArg\(key='[^']*', val='(.*)'\)$", r"\1", given.strip())
    option = ".init_args.".join(keys)
    return invalid(LINKED.get(option, option), given, " or ".join(dict.fromkeys(expected)))


def one_line(err: BaseException) -> str:
    """The line that names the bad value. jsonargparse nests a constructor's error, or a bad key, in a report of
    union subtypes; the innermost reason is the line a user needs (an unknown data set also lists the valid ones)."""
    text = str(err)
    key = text.split('"')[1] if text.startswith('Parser key "') else None
    if key == "data" and ("Expected a dot import path" in text or "either not accessible or invalid" in text):
        given = text.rsplit("Given value:", 1)[-1].strip()
        import datamodules

        valid = ", ".join(n for n in datamodules.__all__ if n.endswith("DataModule") and n != "ImageDataModule")
        return f"unknown data set {given!r}; valid data sets: {valid} (or a dotted class path)"
    ranged = out_of_range(text)
    if ranged:
        return ranged
    skip = ("Expected a <class", "Given value", "Subtypes:", "Errors:", "Does not validate", "Problem with given",
            "Not a valid subclass", "Subclass types expect", "a class path", "a dict with")
    reasons = [line.strip().removeprefix("- ") for line in text.splitlines()[1:]
               if line.strip() and not line.strip().removeprefix("- ").startswith(skip)]
    reason = reasons[-1] if reasons else (text.splitlines() or [type(err).__name__])[0]
    return f"{key}: {reason}" if key else reason


def error_line(err: BaseException, args: list[str], parser: Callable[[], Any]) -> str:
    """The one line `ablate train` prints for ``err`` (a refused value, an unknown option, a YAML error, a run
    refused at set-up), given the command's ``args``; ``parser`` builds `ablate train`'s parser, only when an
    unknown option needs the options that exist."""
    line = one_line(err)
    if str(err).startswith("Problems parsing config"):  # YAML syntax: name the file(s) and where
        files = [a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
                 for i, a in enumerate(args) if a == "--config" or a.startswith("--config=")]
        files = [f for f in files if not _loads(f)] or files  # the file(s) at fault, not every --config
        text = str(err).removeprefix("Problems parsing config:")
        where = " ".join(part.strip() for part in text.splitlines()).replace('in "<unicode string>", ', "at ")
        line = f"YAML error in --config {', '.join(files) or '(config)'}: {where}"
    return with_closest_option(line, args, parser)


def _loads(path: str) -> bool:
    """Whether ``path`` reads as YAML (a missing file is another error: not the one at fault here)."""
    try:
        yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError:
        return False
    except (OSError, ValueError):
        pass
    return True


def flat_keys(config: dict[str, Any]) -> list[str]:
    """``{"a": {"b": 1}}`` -> ``["a.b"]``: the options a config sets (``identity.flat``'s keys)."""
    return list(flat(config))


def _initials(name: str) -> str:
    return "".join(word[0] for word in name.split("_") if word)


def closest_option(key: str, options: list[str]) -> str | None:
    """The option a mistyped ``key`` most likely meant (with or without ``init_args``): a name spelled alike, or
    an abbreviation of it beside it (``learning_rate`` for ``lr``); None when none is close."""
    plain = key.replace(".init_args.", ".")
    table = {option.replace(".init_args.", "."): option for option in options}
    parent, _, leaf = plain.rpartition(".")

    def score(candidate: str) -> float:
        other_parent, _, other_leaf = candidate.rpartition(".")
        if other_parent == parent and "_" in leaf + other_leaf and other_leaf != leaf and (
                _initials(leaf) == other_leaf or _initials(other_leaf) == leaf):
            return 1.0
        return difflib.SequenceMatcher(None, plain, candidate).ratio()

    best = max(table, key=score, default=None)
    return table[best] if best is not None and score(best) >= 0.6 else None


def is_option(key: str, options: list[str]) -> bool:
    """Whether ``key`` is an option, or a parent of options (it may be a class the other options pick)."""
    plain = key.replace(".init_args.", ".")
    return any(o == plain or o.startswith(plain + ".") for o in (o.replace(".init_args.", ".") for o in options))


UNKNOWN_OPTION = re.compile(r"Option '([^']+)' is not accepted|does not accept option '([^']+)'|"
                            r"unrecognized arguments: (\S+)|No action for key \"([^\"]+)\"")


def with_closest_option(line: str, args: list[str], parser: Callable[[], Any]) -> str:
    """An unknown option's line with the option it most likely meant, as a sweep's check names it: the keys
    typed on the command line and in ``--config`` files that are no option of `ablate train` (with the classes
    they pick) are looked up among those that are (``parser()``: `ablate train`'s parser)."""
    found = UNKNOWN_OPTION.search(line)
    if not found or "closest option" in line:
        return line
    named = next(g for g in found.groups() if g).lstrip("-").split("=", 1)[0].split(".")[-1]  # its last part
    typed = [a[2:].split("=", 1)[0] for a in args if a.startswith("--") and not a.startswith("--config")]
    for i, a in enumerate(args):
        path = a.split("=", 1)[1] if a.startswith("--config=") else args[i + 1] if a == "--config" and i + 1 < len(args) else None
        try:
            loaded = yaml.safe_load(Path(path).read_text()) if path else None
        except (OSError, yaml.YAMLError):
            loaded = None
        typed += flat_keys(loaded) if isinstance(loaded, dict) else []
    built = parser()
    options = flat_keys(built.get_defaults().as_dict())
    keep = [a for a in args if not (a.startswith("--") and named in a[2:].split("=", 1)[0].split("."))
            and not a.startswith("--print_config")]  # the shared parser would keep the request for its next parse
    try:  # the options of the classes the command picks (model.init_args.*, data.init_args.*)
        options += flat_keys(built.parse_args(keep).as_dict())
    except Exception:  # noqa: BLE001  the command has another error too: the defaults' options only
        pass
    for key in typed:
        if named in key.split(".") and not is_option(key, options):
            close = closest_option(key, options)
            if close:
                return f"{line}; the closest option is --{close}"
    return line


class OutOfMemory(MemoryError):
    """A batch that does not fit, as one line that suggests a batch that might."""

    @classmethod
    def wrap(cls, err: BaseException, batch_size: int | None) -> "OutOfMemory | None":
        """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError ("DefaultCPUAllocator: can't allocate")."""
        text = str(err)
        if not (isinstance(err, (torch.OutOfMemoryError, MemoryError))
                or (isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower()))):
            return None
        if batch_size and batch_size > 1:
            hint = (f"batch_size={batch_size} does not fit in memory; try --data.init_args.batch_size={batch_size // 2}"
                    " (per device)")
        else:
            hint = "the model does not fit in memory even at batch_size=1; choose a smaller model or image size"
        first = (text.strip().splitlines() or [type(err).__name__])[0][:160]
        return cls(f"out of memory: {hint} ({type(err).__name__}: {first})")
