"""Run the course's code blocks and check (or paste) their outputs.

Every chapter ``docs/course/NN-*.md`` is executed top to bottom in one fresh namespace:
each ```` ```python ```` block runs, and the ```` ```text ```` block right after it (if
any) must be exactly what it printed. A block that prints nothing has no output block.

    python docs/course/run_course.py            # check every chapter (what the tests do)
    python docs/course/run_course.py --write    # paste the real outputs into the chapters
    python docs/course/run_course.py 02         # only chapters whose name contains "02"
"""
from __future__ import annotations

import contextlib
import io
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: the namespace of the chapter run last (``docs/render_figures.py`` draws its variables)
LAST_NAMESPACE: dict = {}
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*\n", re.S | re.M)


@dataclass
class Block:
    code: str
    line: int  # 1-based line of the ```python fence
    output: str | None  # the pasted output, None when there is no output block
    span: tuple  # (start, end) of the output block in the text, or the insertion point


def chapters():
    return sorted(HERE.glob("[0-9][0-9]-*.md"))


def blocks_of(text):
    """The python blocks of a chapter with the text block that follows each."""
    fences = list(_FENCE.finditer(text))
    out = []
    for k, m in enumerate(fences):
        if m.group(1) != "python":
            continue
        nxt = fences[k + 1] if k + 1 < len(fences) else None
        line = text.count("\n", 0, m.start()) + 1
        if nxt is not None and nxt.group(1) == "text" and not text[m.end():nxt.start()].strip():
            out.append(Block(m.group(2), line, nxt.group(2), (nxt.start(), nxt.end())))
        else:
            out.append(Block(m.group(2), line, None, (m.end(), m.end())))
    return out


def run_chapter(path):
    """Execute a chapter; returns [(block, printed text)]. Errors name the block's line."""
    global LAST_NAMESPACE
    text = Path(path).read_text()
    namespace = LAST_NAMESPACE = {"__name__": f"course_{Path(path).stem.replace('-', '_')}"}
    results = []
    for block in blocks_of(text):
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                exec(compile(block.code, f"{path}:{block.line}", "exec"), namespace)  # noqa: S102
        except Exception as err:
            raise RuntimeError(f"{Path(path).name}, block at line {block.line} failed:\n"
                               f"{traceback.format_exc()}") from err
        results.append((block, buf.getvalue()))
    return results


def _normalise(s):
    return "\n".join(line.rstrip() for line in (s or "").strip("\n").splitlines())


def mismatches(path):
    """[(line, expected, got)] for the blocks whose pasted output is not what ran."""
    bad = []
    for block, got in run_chapter(path):
        if _normalise(block.output) != _normalise(got):
            bad.append((block.line, block.output, got))
    return bad


def write(path):
    """Paste every block's real output into the chapter (in place)."""
    text = Path(path).read_text()
    results = run_chapter(path)
    for block, got in reversed(results):  # from the end, so earlier spans stay valid
        start, end = block.span
        body = _normalise(got)
        new = f"```text\n{body}\n```\n" if body else ""
        if block.output is None and new:
            new = "\n" + new
        text = text[:start] + new + text[end:]
    Path(path).write_text(text)


def main(argv):
    paste = "--write" in argv
    wanted = [a for a in argv if not a.startswith("--")]
    failed = False
    for path in chapters():
        if wanted and not any(w in path.name for w in wanted):
            continue
        if paste:
            write(path)
            print(f"pasted outputs into {path.name}")
            continue
        bad = mismatches(path)
        failed |= bool(bad)
        for line, expected, got in bad:
            print(f"{path.name}:{line}: output differs\n--- pasted\n{expected}\n--- got\n{got}")
        print(f"{path.name}: {'OK' if not bad else f'{len(bad)} block(s) differ'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout without installing
    sys.exit(main(sys.argv[1:]))
