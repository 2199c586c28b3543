"""The TypeScript that `dmforge deploy` writes into the app, kept as `.ts` files so that editors, linters and
`tsc` read it as TypeScript (tests/test_ts_templates.py compiles each template as it is).

A template is the module the app gets, plus markup lines that never reach the app:

    // @dmforge-template: a note to whoever edits the template
    // @dmforge-data NAME: what deploy writes here
    export declare const placeholder: TheRightType;   (so the template compiles on its own)
    // @dmforge-end

Each data block, its two marker lines included, is replaced by the text Python generates for NAME: the data
only Python knows (the registry, the config's values, the limits). Everything else is copied byte for byte.
"""

from __future__ import annotations

from importlib import resources

NOTE = "// @dmforge-template"
DATA = "// @dmforge-data "
END = "// @dmforge-end"


class TemplateError(ValueError):
    """A template's markup does not match the data it is filled with: a bug in dmforge, not in the user's files."""


def render(template: str, blocks: dict[str, str]) -> str:
    """The template file `template` of this folder, each data block replaced by `blocks[its name]`."""
    text = resources.files(__name__).joinpath(template).read_text("utf-8")
    out: list[str] = []
    filled: list[str] = []
    block: str | None = None  # the name of the data block being skipped
    for number, line in enumerate(_lines(text), 1):
        where = f"{template}:{number}"
        if line.startswith(DATA):
            if block is not None:
                raise TemplateError(f"{where}: a data block starts inside the block {block!r}")
            block = line[len(DATA) :].split(":", 1)[0].strip()
            if block not in blocks:
                raise TemplateError(f"{where}: no data is given for the block {block!r}")
            if block in filled:
                raise TemplateError(f"{where}: the block {block!r} is in the template twice")
            out.append(blocks[block])
            filled.append(block)
        elif line.startswith(END):
            if block is None:
                raise TemplateError(f"{where}: {END} without a block")
            block = None
        elif block is None and not line.startswith(NOTE):
            out.append(line)
    if block is not None or set(filled) != set(blocks):
        raise TemplateError(f"{template}: blocks {sorted(blocks)} given, {filled} filled (is one left open?)")
    return "".join(out)


def _lines(text: str) -> list[str]:
    """The lines of `text`, each with its newline. Not str.splitlines(): that also splits at characters such as
    U+2028 and U+0085, which TypeScript source may hold inside a string."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return [line for line in lines if line]
