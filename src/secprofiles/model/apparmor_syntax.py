"""Reading AppArmor policy text (apparmor.d(5)) into statements and blocks, with lines and offsets.

Pure and independent of what is allowed (``apparmor`` judges, ``importer`` rewrites). It follows the lexer of
``apparmor_parser`` (parser_lex.l) wherever the difference could matter to a security rule:

* ``#include`` and ``include`` (each optionally ``if exists``) are directives, whatever follows ``#include``
  (``#include<x>`` too); any other ``#`` that starts a token starts a comment to the end of the line, while a
  ``#`` inside a word (``/tmp/a#b``) or a quoted string is part of it;
* quoted strings may span lines and escape ``\\"``; words keep ``{a,b}`` alternations (commas inside braces);
* ``->`` is a token even unspaced; ``^name`` names a hat; ``(…)`` groups (``flags=(a,b)``, ``peer=(…)``)
  are one token, commas included;
* ``@{VAR} = …`` / ``+=`` and ``$BOOL = …`` assignments run to the end of the line, a trailing ``\\``
  continuing them on the next line.

Where it cannot be sure it splits more, never less: a statement is checked on its own, so splitting a rule
can only make a check see more, not hide a permission. The parser itself stays the oracle for syntax
(``apparmor_parser``): this module never decides that text is well-formed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Kinds of tokens.
WORD, QUOTED, ARROW, CARET, OPEN, CLOSE, COMMA, GROUP = "word", "quoted", "->", "^", "{", "}", ",", "()"
# Kinds of statements.
INCLUDE, ASSIGNMENT, RULE, HEADER, CLOSING = "include", "assignment", "rule", "header", "closing"
# Kinds of blocks.
PROFILE, HAT, CONDITIONAL, UNKNOWN_BLOCK = "profile", "hat", "conditional", "block"

# File rule permissions as the parser's lexer reads them (MODE_CHARS): exec modes are the x-forms.
MODES = re.compile(r"^(?:[RrWwaLlMmkXx]|[PpCc][Xx]|[PpCc]?[IiUu][Xx])+$")
# Rule qualifiers that may precede a rule or block (``audit deny owner /x w,``); ``priority=N`` is one too.
QUALIFIERS = frozenset({"audit", "deny", "allow", "owner", "quiet", "kill", "prompt"})
_ASSIGNMENT = re.compile(r"(?:@\{[A-Za-z][A-Za-z0-9_]*\}|\$\{?[A-Za-z][A-Za-z0-9_]*\}?)[ \t]*(?:\+=|\?=|:=|=)")
_INCLUDE_HASH = re.compile(r"#include")
_INCLUDE_WORD = re.compile(r"include[ \t]")
_IF_EXISTS = re.compile(r"[ \t]+if[ \t]+exists[ \t]")
_BLANK = " \t"
_WORD_END = " \t\r\n\"!"


@dataclass(frozen=True)
class Token:
    """One lexical token: its kind, text (a quoted string without its quotes), line and span in the text."""

    kind: str
    text: str
    line: int
    start: int
    end: int


@dataclass
class Statement:
    """A directive, an assignment, a rule (ending at ``,``), a block header (ending at ``{``) or a ``}``."""

    kind: str
    line: int
    start: int
    end: int
    tokens: list[Token] = field(default_factory=list)
    target: str = ""        # include / abi: the file as written, e.g. ``<abstractions/base>``
    if_exists: bool = False  # include if exists
    hash_form: bool = False  # ``#include`` rather than ``include``

    @property
    def words(self) -> list[str]:
        """The statement's token texts, for matching."""
        return [t.text for t in self.tokens]


@dataclass
class Block:
    """A profile, hat, conditional (``if``/``else``) or unknown block, with what it contains."""

    kind: str
    header: Statement
    name: str = ""
    attachment: list[Token] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    flags_token: Token | None = None
    conditions: list[Token] = field(default_factory=list)  # xattrs=(…) and the like: part of the attachment
    items: list[Statement | Block] = field(default_factory=list)
    closing: Statement | None = None

    @property
    def line(self) -> int:
        """Line of the header."""
        return self.header.line


@dataclass
class Policy:
    """A whole policy text: top-level items, plus what could not be read as a structure."""

    text: str
    items: list[Statement | Block]
    problems: list[tuple[int, str]]

    def blocks(self) -> list[Block]:
        """Top-level profile blocks, conditionals looked into (a profile may be defined inside ``if``)."""
        return [b for b in _walk_blocks(self.items) if b.kind != CONDITIONAL]


def _walk_blocks(items: list[Statement | Block]) -> list[Block]:
    found: list[Block] = []
    for item in items:
        if isinstance(item, Block):
            if item.kind == CONDITIONAL:
                found += _walk_blocks(item.items)
            else:
                found.append(item)
    return found


def tokenize(text: str) -> list[Statement]:
    """The statements of ``text`` in order (comments dropped)."""
    return _Lexer(text).run()


def parse(text: str) -> Policy:
    """Statements nested into blocks. Unbalanced braces are reported in ``problems`` (line, message)."""
    statements = tokenize(text)
    problems: list[tuple[int, str]] = []
    root: list[Statement | Block] = []
    stack: list[Block] = []
    for statement in statements:
        container = stack[-1].items if stack else root
        if statement.kind == HEADER:
            block = _block(statement)
            container.append(block)
            stack.append(block)
        elif statement.kind == CLOSING:
            if not stack:
                problems.append((statement.line, "'}' closes nothing"))
                continue
            stack.pop().closing = statement
        else:
            container.append(statement)
    for block in stack:
        problems.append((block.line, "a '{' is never closed"))
    return Policy(text, root, problems)


def _block(header: Statement) -> Block:
    tokens = list(header.tokens)
    while tokens and tokens[0].kind == WORD and tokens[0].text in QUALIFIERS:
        tokens.pop(0)
    first = tokens[0] if tokens else None
    if first is None:
        return Block(UNKNOWN_BLOCK, header)
    if first.kind == WORD and first.text in ("if", "else"):
        return Block(CONDITIONAL, header)
    if first.kind == CARET:
        return _named(Block(HAT, header, name=first.text), tokens[1:])
    if first.kind == WORD and first.text in ("profile", "hat"):
        kind = PROFILE if first.text == "profile" else HAT
        if len(tokens) < 2 or tokens[1].kind not in (WORD, QUOTED):
            return Block(kind, header)
        return _named(Block(kind, header, name=tokens[1].text), tokens[2:])
    if first.kind == QUOTED or (first.kind == WORD and first.text.startswith(("/", "@{", ":", "&"))):
        # A profile named by its attachment path (``/usr/bin/foo {``): the name is the path.
        return _named(Block(PROFILE, header, name=first.text), tokens[1:])
    return Block(UNKNOWN_BLOCK, header)


def _named(block: Block, rest: list[Token]) -> Block:
    """Attachment, conditions and flags after a profile or hat name."""
    index = 0
    while index < len(rest):
        token = rest[index]
        key = token.text.rstrip("=")
        if token.kind == WORD and key in ("flags", "xattrs"):
            group = next((t for t in rest[index + 1:index + 3] if t.kind == GROUP), None)
            consumed = rest.index(group) - index + 1 if group else 1
            if key.startswith("flags") and group is not None:
                block.flags = [f.strip() for f in _split_group(group.text) if f.strip()]
                block.flags_token = group
            elif group is not None:
                block.conditions += rest[index:index + consumed]
            index += consumed
            continue
        if token.kind == WORD and token.text == "=":
            index += 1
            continue
        block.attachment.append(token)
        index += 1
    return block


def _split_group(text: str) -> list[str]:
    """``(a, b=c)`` to ``['a', 'b=c']`` (no nesting inside flags)."""
    return [part.strip() for part in text.strip()[1:-1].replace("\n", " ").split(",")]


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.statements: list[Statement] = []
        self.pending: list[Token] = []

    def run(self) -> list[Statement]:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in _BLANK or char == "\r":
                self.pos += 1
            elif char == "\n":
                self.pos += 1
                self.line += 1
            elif _INCLUDE_HASH.match(text, self.pos):
                self._include(len("#include"), hash_form=True)
            elif char == "#":
                self._skip_to_line_end()
            elif _INCLUDE_WORD.match(text, self.pos) and self._at_token_start():
                self._include(len("include"), hash_form=False)
            elif char in "@$" and not self.pending and _ASSIGNMENT.match(text, self.pos):
                self._assignment()
            elif char == '"':
                self.pending.append(self._quoted())
            elif text.startswith("->", self.pos):
                self.pending.append(Token(ARROW, "->", self.line, self.pos, self.pos + 2))
                self.pos += 2
            elif char == "^":
                start, line = self.pos, self.line
                self.pos += 1
                name = self._word_text() if self.pos < len(text) and text[self.pos] not in _WORD_END else ""
                self.pending.append(Token(CARET, name, line, start, self.pos))
            elif char == "(":
                self.pending.append(self._group())
            elif char == ",":
                self._end(RULE, self.pos + 1)
                self.pos += 1
            elif char == "{":
                self._end(HEADER, self.pos + 1)
                self.pos += 1
            elif char == "}":
                if self.pending:
                    self._end(RULE, self.pos)
                self.statements.append(Statement(CLOSING, self.line, self.pos, self.pos + 1,
                                                 [Token(CLOSE, "}", self.line, self.pos, self.pos + 1)]))
                self.pos += 1
            else:
                start, line = self.pos, self.line
                word = self._word_text()
                if not word:  # a character no rule takes ('!' at a token start): keep it, never loop
                    word = text[self.pos]
                    self.pos += 1
                self.pending.append(Token(WORD, word, line, start, self.pos))
        if self.pending:
            self._end(RULE, len(text))
        return self.statements

    def _at_token_start(self) -> bool:
        return self.pos == 0 or self.text[self.pos - 1] in " \t\r\n,{}"

    def _end(self, kind: str, end: int) -> None:
        tokens, self.pending = self.pending, []
        if not tokens and kind == RULE:
            return
        start = tokens[0].start if tokens else end - 1
        line = tokens[0].line if tokens else self.line
        self.statements.append(Statement(kind, line, start, end, tokens))

    def _skip_to_line_end(self) -> None:
        newline = self.text.find("\n", self.pos)
        self.pos = len(self.text) if newline < 0 else newline

    def _include(self, keyword_length: int, hash_form: bool) -> None:
        # A directive interrupts nothing: tokens before it on the line stay pending (the parser does the same).
        start, line = self.pos, self.line
        self.pos += keyword_length
        if_exists = bool(_IF_EXISTS.match(self.text, self.pos))
        if if_exists:
            self.pos = self.text.index("exists", self.pos) + len("exists")
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            if self.text[self.pos] == "\n":
                self.line += 1
            self.pos += 1
        target_start = self.pos
        if self.text.startswith("<", self.pos):
            close = self.text.find(">", self.pos)
            newline = self.text.find("\n", self.pos)
            stop = close + 1 if close >= 0 and (newline < 0 or close < newline) else \
                (newline if newline >= 0 else len(self.text))
            self.pos = stop
        elif self.text.startswith('"', self.pos):
            self._quoted()
        else:
            while self.pos < len(self.text) and self.text[self.pos] not in " \t\r\n\"!,<>":
                self.pos += 1
        target = self.text[target_start:self.pos]
        self.statements.append(Statement(INCLUDE, line, start, self.pos, [], target=target, if_exists=if_exists,
                                         hash_form=hash_form))

    def _assignment(self) -> None:
        start, line = self.pos, self.line
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char == "\\" and text.startswith("\n", self.pos + 1):
                self.pos += 2
                self.line += 1
            elif char == "\n":
                break
            elif char == "#" and text[self.pos - 1] in " \t":
                self._skip_to_line_end()
                break
            elif char == '"':
                self._quoted()
            else:
                self.pos += 1
        body = text[start:self.pos]
        self.statements.append(Statement(ASSIGNMENT, line, start, self.pos,
                                         [Token(WORD, body, line, start, self.pos)]))

    def _quoted(self) -> Token:
        start, line = self.pos, self.line
        self.pos += 1
        text = self.text
        while self.pos < len(text) and text[self.pos] != '"':
            if text[self.pos] == "\\" and self.pos + 1 < len(text):
                self.pos += 1
            if text[self.pos] == "\n":
                self.line += 1
            self.pos += 1
        self.pos = min(self.pos + 1, len(text))
        return Token(QUOTED, text[start + 1:self.pos - 1], line, start, self.pos)

    def _group(self) -> Token:
        start, line = self.pos, self.line
        text = self.text
        depth = 0
        while self.pos < len(text):
            char = text[self.pos]
            if char == '"':
                self._quoted()
                continue
            if char == "\n":
                self.line += 1
            elif char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if depth == 0:
                    self.pos += 1
                    break
            self.pos += 1
        return Token(GROUP, text[start:self.pos], line, start, self.pos)

    def _word_text(self) -> str:
        """A word: ends at whitespace, a quote, '!', ',' outside a {…} alternation, '->', '(' after '='."""
        text = self.text
        start = self.pos
        depth = 0
        while self.pos < len(text):
            char = text[self.pos]
            if char in _WORD_END:
                break
            if char == "{":
                if self.pos == start:
                    break
                depth += 1
            elif char == "}":
                if depth == 0:
                    break
                depth -= 1
            elif (char == "," and depth == 0) or text.startswith("->", self.pos) or \
                    (char == "(" and self.pos > start and text[self.pos - 1] == "="):
                break
            self.pos += 1
        return text[start:self.pos]
