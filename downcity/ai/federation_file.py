"""Load a federation YAML file: every error names the file, the line and the field.

`load_federation_file("federation.yaml")` reads, validates (pydantic, then the cross-field rules of
`federation_spec.check`), imports any named hooks and returns the Federation. Line numbers come from the
YAML node marks, so a message points at the key that is wrong, or at its parent when the key is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from downcity.ai.federation import Federation
from downcity.ai.federation_spec import PATTERN_MEANINGS, Builder, FederationSpec, Issue, Loc, check

FILE_SUFFIXES = (".yaml", ".yml")


def is_federation_file(target: str) -> bool:
    """Whether a `--federation`/`args.federation` value names a YAML file rather than 'module:attribute'."""
    return target.endswith(FILE_SUFFIXES)


@dataclass(frozen=True)
class Problem:
    """One reason a file cannot be served: its line (0 when unknown), field (empty for the file) and message."""

    line: int
    field: str
    message: str

    def where(self, path: Path) -> str:
        """`path:line: field: message`."""
        field = f" {self.field}:" if self.field else ""
        return f"{path}:{self.line}:{field} {self.message}"


class FederationFileError(ValueError):
    """A federation file that cannot be served, with every problem found, one per line of the message."""

    def __init__(self, path: Path, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problem.where(path) for problem in problems))


def field_name(loc: Loc) -> str:
    """`("models", 0, "price")` as `models[0].price`."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else part)
    return name


def line_of(root: yaml.Node, loc: Loc) -> int:
    """The 1-based line of the deepest node of `loc` present in the file."""
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next(((key, value) for key, value in node.value if key.value == part), None)
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _parse(path: Path) -> tuple[yaml.Node, object]:
    try:
        text = path.read_text()
    except OSError as error:
        raise FederationFileError(path, [Problem(0, "", f"cannot read the file: {error.strerror}")]) from None
    try:
        root, data = yaml.compose(text, Loader=yaml.SafeLoader), yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(error, "problem", None) or str(error)
        raise FederationFileError(path, [Problem(line, "", f"invalid YAML: {problem}")]) from None
    if root is None:
        raise FederationFileError(path, [Problem(1, "", "the file is empty")])
    return root, data


def _message(error: ErrorDetails) -> str:
    if error["type"] == "string_pattern_mismatch":
        return PATTERN_MEANINGS.get(str(error.get("ctx", {}).get("pattern")), error["msg"])
    return error["msg"]


def _problems(root: yaml.Node, issues: list[Issue]) -> list[Problem]:
    return [Problem(line_of(root, issue.loc), field_name(issue.loc), issue.message) for issue in issues]


def load_federation_file(path: str | Path) -> Federation:
    """The Federation a YAML file declares; FederationFileError naming each bad line and field."""
    file = Path(path)
    root, data = _parse(file)
    try:
        spec = FederationSpec.model_validate(data)
    except ValidationError as error:
        issues = [Issue(tuple(e["loc"]), _message(e)) for e in error.errors(include_url=False)]
        raise FederationFileError(file, _problems(root, issues)) from None
    issues = check(spec)
    if issues:
        raise FederationFileError(file, _problems(root, issues))
    builder = Builder()
    federation = builder.federation(spec)
    if builder.issues:
        raise FederationFileError(file, _problems(root, builder.issues))
    return federation
