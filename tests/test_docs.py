"""Every command in README.md and docs/*.md (and the READMEs of docs/measurements and notebooks) runs as written.

Each fenced ```bash block is read line by line (a trailing backslash continues a line, leading ``NAME=value``
words are environment). Every command is checked without training anything: ``ablate train ...`` must parse with
``--print_config`` appended, the other ``ablate`` subcommands with the command line's own parser (a sweep spec is
loaded, and expanded with its ``--set``/``--grid`` so that every key is checked by ``ablate train``'s parser),
``make TARGET`` with ``make -n``, ``python -m MODULE`` through its ``--help`` (every option the doc names must
be listed there). A command that cannot run here says why in a comment the test reads, ``# needs: gpu`` (or slurm,
wandb, data, runs, jupyter), and is still checked. ``ablate models`` and ``ablate match`` are cheap enough to run for
real (the slow test), and the table in docs/models.md must be ``ablate models``'s output.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "docs" / "measurements" / "README.md",
        ROOT / "notebooks" / "README.md"]
NEEDS = {"gpu", "slurm", "wandb", "data", "runs", "jupyter"}  # what a command may need that a test machine lacks;
# runs: the runs an earlier command makes (a sweep that reads another sweep's manifest, a report of the demo)
RUN_HERE = {"models", "match"}  # ablate subcommands cheap enough to run for real
FENCE = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    words: tuple[str, ...]
    needs: frozenset[str]

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.words)}"


def documented_commands(text: str, label: str) -> list[Command]:
    """The commands of ``text``'s bash blocks, each labelled ``label:line``."""
    commands = []
    for block in FENCE.finditer(text):
        first_line = text.count("\n", 0, block.start(1)) + 1
        lines = block.group(1).splitlines()
        i = 0
        while i < len(lines):
            start, line = i, lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i]
            i += 1
            needs = re.search(r"#\s*needs:\s*([\w, ]+)", line)
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # environment for the command
                words = words[1:]
            if words:
                marked = frozenset(w.strip() for w in needs.group(1).split(",")) if needs else frozenset()
                commands.append(Command(f"{label}:{first_line + start}", tuple(words), marked))
    return commands


COMMANDS = [c for doc in DOCS for c in documented_commands(doc.read_text(), str(doc.relative_to(ROOT)))]


def _call(function, *args) -> tuple[int, str]:
    """``function(*args)``'s exit code (a SystemExit's included) and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            result = function(*args)
            code = result if isinstance(result, int) else 0
        except SystemExit as stop:
            code = stop.code
    return code or 0, out.getvalue()


def check_ablate(args: list[str], needs: frozenset[str] = frozenset()) -> None:
    from ablations.cli import build_parser, main

    if args[:1] == ["train"]:
        code, printed = _call(main, [*args, "--print_config"])
        assert code == 0, printed
        return
    code, printed = _call(build_parser().parse_args, args)
    assert code == 0, printed
    if "--help" in args or "-h" in args:
        return
    parsed = build_parser().parse_args(args)
    for path in [getattr(parsed, "spec", None), getattr(parsed, "source", None)]:
        if path and path.endswith((".yaml", ".yml")) and "runs" in needs:  # a chained spec reads runs not here
            assert (ROOT / path).is_file(), f"{path} does not exist"
        elif path and path.endswith((".yaml", ".yml")):  # a sweep spec: loaded, and its extra keys checked
            from ablations.cli import _parse_overrides
            from ablations.sweep import SweepSpec

            spec = SweepSpec.load(ROOT / path, _parse_overrides(getattr(parsed, "set", [])),
                                  _parse_overrides(getattr(parsed, "grid", []), "--grid", values=True))
            if getattr(parsed, "set", None) or getattr(parsed, "grid", None):
                spec.expand()
    if parsed.command == "sweep" and parsed.slurm:
        from ablations.cluster import parse_settings

        parse_settings(parsed.slurm)
    if parsed.command in ("bench", "models"):
        from lightning_modules.backbones import list_models

        names = parsed.model if parsed.command == "bench" else parsed.models  # bench also takes layouts
        unknown = [m for m in names if m not in list_models() and not (parsed.command == "bench" and "-" in m)]
        assert not unknown, f"not registry models: {unknown}"


def check_module(module: str, args: list[str]) -> None:
    """``python -m MODULE ARGS``, for a module whose ``main(argv)`` would start real work: every option the doc gives
    must be one its ``--help`` lists (in this process: the module's imports are already loaded)."""
    import importlib

    code, help_text = _call(importlib.import_module(module).main, ["--help"])
    assert code == 0, help_text
    for option in [w.split("=")[0] for w in args if w.startswith("--")]:
        assert option in help_text.split(), f"{option} is not an option of python -m {module} (its --help)"


def check(command: Command) -> None:
    words = list(command.words)
    program = Path(words[0]).name
    if program == "ablate":
        check_ablate(words[1:], command.needs)
    elif program == "make":
        run = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
    elif program == "sbatch":  # the job script hands its arguments to `ablate train`
        assert (ROOT / words[1]).is_file(), f"{words[1]} does not exist"
        assert "ablate train" in (ROOT / words[1]).read_text()
        check_ablate(["train", *words[2:]])
    elif program in ("python", "python3") and words[1:3] == ["-m", "pytest"]:  # not run inside this run: the files
        for word in words[3:]:
            assert word.startswith("-") or (ROOT / word.split("::")[0]).exists(), f"{word} does not exist"
    elif program in ("python", "python3") and words[1:2] == ["-m"]:
        check_module(words[2], words[3:])
    elif program in ("jupyter", "source", "wandb"):  # tools of their own: the files they are given must exist
        for word in words[1:]:
            if "/" in word and not word.startswith(("-", "wandb:", ".venv")) and "*" not in word:
                assert (ROOT / word).exists(), f"{word} does not exist"
    else:
        pytest.fail(f"no check for the program {program!r}; teach tests/test_docs.py how to check it")


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_every_documented_command_parses(command: Command) -> None:
    assert command.needs <= NEEDS, f"unknown needs {sorted(command.needs - NEEDS)}; valid: {sorted(NEEDS)}"
    check(command)


def test_the_docs_have_commands_and_every_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(COMMANDS) > 30 and any(c.words[:2] == ("ablate", "train") for c in COMMANDS)
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"


def test_every_relative_link_in_the_docs_exists() -> None:
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not re.match(r"[a-z]+:", target):
                assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links {target}, which does not exist"


def test_a_doc_naming_an_option_that_does_not_exist_fails() -> None:
    """The checks catch a renamed option, subcommand or target (shown on real lines with one word broken)."""
    for line in ("ablate sweep ablations/sweeps/demo.yaml --no-such-flag",
                 "ablate sweep ablations/sweeps/demo.yaml --grid data.init_args.train_fraktion=0.5,1",
                 "ablate frobnicate runs/demo",
                 "make no-such-target",
                 "python -m ablations.gpu_check --no-such-option",
                 "ablate train --config ablations/configs/digits_tiny.yaml --model.init_args.no_such_option 1"):
        [command] = documented_commands(f"```bash\n{line}  # needs: gpu\n```\n", "sample")
        assert command.needs == {"gpu"}
        with pytest.raises((AssertionError, ValueError)):
            check(command)


@pytest.mark.slow
def test_the_cheap_commands_run_and_the_models_table_is_what_ablate_models_prints() -> None:
    from ablations.cli import main

    runnable = {c.words: c for c in COMMANDS if Path(c.words[0]).name == "ablate" and c.words[1:2]
                and c.words[1] in RUN_HERE and not c.needs}
    assert ("ablate", "models") in runnable, "the docs never show `ablate models`"
    printed = {}
    for words, command in runnable.items():
        code, printed[words] = _call(main, list(words[1:]))
        assert code == 0 and printed[words].strip(), f"{command}: {printed[words]}"
    models_doc = (ROOT / "docs" / "models.md").read_text()
    stale = [row for row in printed["ablate", "models"].splitlines() if row.startswith("| ") and row not in models_doc]
    assert not stale, f"docs/models.md differs from `ablate models` in: {stale}"


@pytest.mark.slow
def test_bench_out_writes_the_table_with_its_date_machine_and_command(tmp_path) -> None:
    import time

    from ablations.cli import machine, main

    argv = ["bench", "C-C", "--set", "depths=[1,1]", "--set", "dims=[16,32]", "--set", "stem_dim=16", "--batch", "2",
            "--image-size", "32", "--rounds", "1", "--warmup", "0", "--num-classes", "10", "--out", str(tmp_path)]
    code, printed = _call(main, argv)
    assert code == 0, printed
    [written] = tmp_path.glob("bench-*.md")
    text = written.read_text()
    table_row = next(line for line in printed.splitlines() if line.startswith("C-C depths=[1, 1]"))
    assert time.strftime("%Y-%m-%d", time.gmtime()) in text and machine() in text
    assert shlex.join(["ablate", *argv]) in text and table_row in text
    code, printed = _call(main, [*argv[:-1], str(tmp_path / "bench.txt")])  # refused before anything is measured
    assert code == 2 and printed.strip().splitlines() == [f"ablate bench: error: --out {tmp_path / 'bench.txt'} is not "
                                                          "valid; expected a .md file or a folder"]


def test_a_refused_print_config_leaves_no_request_behind_for_a_sweep_in_the_same_process():
    """A bad ``ablate train ... --print_config`` (its message looks the closest option up with the process's shared
    training parser) must not leave the request there: a sweep loaded next would print a config and exit 0."""
    from ablations.cli import main
    from ablations.sweep import SweepSpec

    assert main(["train", "--config", "ablations/configs/digits_tiny.yaml", "--model.init_args.no_such_option", "1",
                 "--print_config"]) == 2
    assert len(SweepSpec.load(ROOT / "ablations/sweeps/demo.yaml").expand()) == 30
