"""A small checker of the Graphviz DOT language, so tests need no Graphviz to know that
``mg.to_dot`` writes text ``dot`` will accept.

It follows the grammar of https://graphviz.org/doc/info/lang.html (graphs, subgraphs,
node/edge/attribute statements, IDs: identifiers, numerals, double-quoted strings and
HTML strings) and additionally parses every HTML label as XML, which is what Graphviz
does with ``<...>`` labels (an unescaped ``<`` or ``&`` would be rejected there).
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

KEYWORDS = {"graph", "digraph", "subgraph", "node", "edge", "strict"}
_IDENT = re.compile(r"[A-Za-z_\x80-\uffff][A-Za-z_0-9\x80-\uffff]*")
_NUMERAL = re.compile(r"-?(\.[0-9]+|[0-9]+(\.[0-9]*)?)")


class DotSyntaxError(ValueError):
    pass


def tokenize(text):
    tokens, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif text.startswith("//", i) or c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise DotSyntaxError("unterminated comment")
            i = end + 2
        elif text.startswith("->", i) or text.startswith("--", i):
            tokens.append(("edgeop", text[i:i + 2]))
            i += 2
        elif c in "{}[];,=:":
            tokens.append((c, c))
            i += 1
        elif c == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    buf.append(text[j:j + 2])
                    j += 2
                    continue
                if text[j] == "\n":
                    raise DotSyntaxError(f"raw newline in a quoted string at {i}")
                buf.append(text[j])
                j += 1
            if j >= n:
                raise DotSyntaxError(f"unterminated string at {i}")
            tokens.append(("id", "".join(buf)))
            i = j + 1
        elif c == "<":
            depth, j = 0, i
            while j < n:
                if text[j] == "<":
                    depth += 1
                elif text[j] == ">":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if j >= n:
                raise DotSyntaxError(f"unbalanced HTML string at {i}")
            html = text[i + 1:j]
            try:
                ET.fromstring(f"<html>{html}</html>")
            except ET.ParseError as err:
                msg = f"HTML label is not well-formed XML: {html!r}: {err}"
                raise DotSyntaxError(msg) from None
            tokens.append(("id", html))
            i = j + 1
        else:
            m = _IDENT.match(text, i) or _NUMERAL.match(text, i)
            if not m:
                raise DotSyntaxError(f"unexpected character {c!r} at {i}")
            word = m.group(0)
            kind = word.lower() if word.lower() in KEYWORDS else "id"
            tokens.append((kind, word))
            i = m.end()
    return tokens


class _Parser:
    def __init__(self, tokens):
        self.toks, self.pos = tokens, 0
        self.nodes, self.edges, self.directed = set(), [], True

    def peek(self, k=0):
        return self.toks[self.pos + k][0] if self.pos + k < len(self.toks) else None

    def take(self, kind):
        if self.peek() != kind:
            got = self.toks[self.pos] if self.pos < len(self.toks) else "end of text"
            raise DotSyntaxError(f"expected {kind!r}, got {got!r} (token {self.pos})")
        tok = self.toks[self.pos]
        self.pos += 1
        return tok[1]

    def graph(self):
        if self.peek() == "strict":
            self.take("strict")
        kind = self.peek()
        if kind not in ("graph", "digraph"):
            raise DotSyntaxError("a DOT file starts with 'graph' or 'digraph'")
        self.directed = kind == "digraph"
        self.take(kind)
        if self.peek() == "id":
            self.take("id")
        self.take("{")
        self.stmt_list()
        self.take("}")
        if self.pos != len(self.toks):
            raise DotSyntaxError("text after the closing brace")

    def stmt_list(self):
        while self.peek() not in ("}", None):
            self.stmt()
            if self.peek() == ";":
                self.take(";")

    def stmt(self):
        kind = self.peek()
        if kind in ("graph", "node", "edge"):
            self.take(kind)
            self.attr_list(required=True)
        elif kind == "id" and self.peek(1) == "=":
            self.take("id")
            self.take("=")
            self.take("id")
        else:
            first = self.operand()
            if self.peek() == "edgeop":
                chain = [first]
                while self.peek() == "edgeop":
                    op = self.take("edgeop")
                    if op != ("->" if self.directed else "--"):
                        raise DotSyntaxError(f"edge operator {op} in a "
                                             f"{'digraph' if self.directed else 'graph'}")
                    chain.append(self.operand())
                self.edges.append(chain)
            if self.peek() == "[":
                self.attr_list()

    def operand(self):
        if self.peek() in ("subgraph", "{"):
            if self.peek() == "subgraph":
                self.take("subgraph")
                if self.peek() == "id":
                    self.take("id")
            self.take("{")
            self.stmt_list()
            self.take("}")
            return "<subgraph>"
        name = self.take("id")
        if self.peek() == ":":
            self.take(":")
            self.take("id")
            if self.peek() == ":":
                self.take(":")
                self.take("id")
        self.nodes.add(name)
        return name

    def attr_list(self, required=False):
        if required and self.peek() != "[":
            raise DotSyntaxError("attribute statement without [...]")
        while self.peek() == "[":
            self.take("[")
            while self.peek() != "]":
                self.take("id")
                self.take("=")
                self.take("id")
                if self.peek() in (",", ";"):
                    self.take(self.peek())
            self.take("]")


def parse_dot(text):
    """Check ``text``; return (node ids, edge chains). Raises ``DotSyntaxError``."""
    parser = _Parser(tokenize(text))
    parser.graph()
    return parser.nodes, parser.edges
