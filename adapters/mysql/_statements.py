"""Which tables a statement in the binlog changes without row events: DDL that drops, renames or
empties a table, and DML a session logged as a statement (binlog_format STATEMENT or MIXED).

Binlog capture reads row events; a statement that replaces or empties a captured table's rows
some other way must stop the pair, so the names it touches are read here from the statement's
text. The reading is a small tokenizer, not a full parser: it knows backquoted names (with ``
inside), db-qualified names, comments and strings, and the MariaDB/MySQL forms of these
statements (sqlglot refuses MySQL modifiers such as LOW_PRIORITY, IGNORE and DELAYED, and
parses REPLACE as an opaque command). Where it is unsure it names a table rather than not:
stopping a pair for nothing costs a re-copy, missing a change costs the ledger.
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: A token: a backquoted name, a quoted string, a comment, a word or number, or one character.
_TOKEN = re.compile(r"""`(?:[^`]|``)*`|'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*"|/\*.*?\*/|(?:--\s|\#)[^\n]*"""
                    r"""|[\w$]+|\S""", re.S)
#: Words after which a name in a table reference list is a table (UPDATE/DELETE).
_TABLE_BEFORE = {",", "(", "JOIN", "STRAIGHT_JOIN", "FROM", "USING", "UPDATE", "DELETE", "LOW_PRIORITY", "QUICK",
                 "IGNORE"}
_INSERT_MODIFIERS = {"LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"}
_DML = {"INSERT", "REPLACE", "UPDATE", "DELETE"}


class Name(NamedTuple):
    """A table as a statement names it: ``database`` is the session's default one when unqualified."""
    database: str
    table: str


class Effect(NamedTuple):
    """What a statement does (e.g. "DROP TABLE") and the tables it does it to."""
    action: str
    tables: list[Name]


class _Token(NamedTuple):
    text: str  # a name unquoted; a word in upper case
    name: bool  # a name (a backquoted one, or a word that may be one)


def _tokens(statement: str) -> list[_Token]:
    found = []
    for match in _TOKEN.finditer(statement):
        text = match.group()
        if text.startswith("`"):
            found.append(_Token(text[1:-1].replace("``", "`"), True))
        elif text.startswith(("/*!", "/*M!")):
            # An executable comment (/*!40000 TRUNCATE t */, /*M!100000 ... */): the server runs
            # what is inside it, so it counts as written plainly.
            found += _tokens(re.sub(r"^/\*M?!\d*", "", text)[:-2])
        elif text[0] in "'\"" or text.startswith(("/*", "--", "#")):
            continue  # a string or a comment: no name in it
        elif re.fullmatch(r"[\w$]+", text):
            found.append(_Token(text, not text.isdigit()))
        else:
            found.append(_Token(text, False))
    return found


def _word(token: _Token | None) -> str:
    return token.text.upper() if token is not None and (token.name or not token.text[0].isalnum()) else ""


class _Reader:
    """Tokens with a cursor; names read relative to the session's default database."""

    def __init__(self, statement: str, schema: str):
        self.tokens, self.at, self.schema = _tokens(statement), 0, schema

    def peek(self, ahead: int = 0) -> str:
        index = self.at + ahead
        return _word(self.tokens[index]) if index < len(self.tokens) else ""

    def skip(self, *words: str) -> bool:
        """Move past the words if they come next (all of them, in order)."""
        if [self.peek(i) for i in range(len(words))] == list(words):
            self.at += len(words)
            return True
        return False

    def skip_any(self, words: set[str]) -> None:
        while self.peek() in words:
            self.at += 1

    def name(self) -> Name | None:
        """A (possibly db-qualified) table name at the cursor, read past it; None if none is there."""
        if self.at >= len(self.tokens) or not self.tokens[self.at].name:
            return None
        first = self.tokens[self.at].text
        self.at += 1
        if self.peek() == "." and self.at + 1 < len(self.tokens) and self.tokens[self.at + 1].name:
            self.at += 2
            return Name(first, self.tokens[self.at - 1].text)
        return Name(self.schema, first)


def effect(statement: str, schema: str) -> Effect | None:
    """What ``statement`` (run with default database ``schema``) does to which tables without row
    events, or None when it does nothing of the kind (or is something else)."""
    reader = _Reader(statement, schema)
    verb = reader.peek()
    if verb in ("INSERT", "REPLACE", "UPDATE", "DELETE", "WITH"):
        return _dml(reader)
    reader.at += 1
    if verb == "TRUNCATE":
        reader.skip("TABLE")
        return Effect("TRUNCATE", _names(reader.name()))
    if verb == "DROP":
        return _drop(reader)
    if verb == "RENAME":
        return _rename(reader)
    if verb == "ALTER":
        return _alter(reader)
    if verb == "CREATE" and reader.skip("OR", "REPLACE") and reader.skip("TABLE"):
        reader.skip("IF", "NOT", "EXISTS")
        return Effect("CREATE OR REPLACE TABLE", _names(reader.name()))
    return None


def _names(*names: Name | None) -> list[Name]:
    return [n for n in names if n is not None]


def _drop(reader: _Reader) -> Effect | None:
    if reader.peek() in ("DATABASE", "SCHEMA"):
        reader.at += 1
        reader.skip("IF", "EXISTS")
        found = reader.name()
        return Effect("DROP DATABASE", [Name(found.table, "*")]) if found else None
    if not (reader.skip("TABLE") or reader.skip("TABLES")):  # TEMPORARY tables are the session's own
        return None
    reader.skip("IF", "EXISTS")
    tables = _names(reader.name())
    while tables and reader.skip(","):
        tables += _names(reader.name())
    return Effect("DROP TABLE", tables)


def _rename(reader: _Reader) -> Effect | None:
    if not (reader.skip("TABLE") or reader.skip("TABLES")):
        return None  # RENAME USER
    reader.skip("IF", "EXISTS")
    tables: list[Name] = []
    while reader.at < len(reader.tokens):
        if reader.peek() in ("TO", ","):
            reader.at += 1
            reader.skip("IF", "EXISTS")
        elif reader.peek() in ("WAIT", "NOWAIT"):
            reader.at += 2 if reader.peek() == "WAIT" else 1
            continue
        found = reader.name()
        if found is None:
            reader.at += 1
        tables += _names(found)
    return Effect("RENAME TABLE", tables)


#: ALTER TABLE clauses that replace or remove rows without row events: (words, action, a table follows).
_ALTER_CLAUSES = [(("RENAME", "TO"), "ALTER TABLE ... RENAME", True),
                  (("RENAME", "AS"), "ALTER TABLE ... RENAME", True),
                  (("TRUNCATE", "PARTITION"), "ALTER TABLE ... TRUNCATE PARTITION", False),
                  (("DROP", "PARTITION"), "ALTER TABLE ... DROP PARTITION", False),
                  (("IMPORT", "TABLESPACE"), "ALTER TABLE ... IMPORT TABLESPACE", False),
                  (("WITH", "TABLE"), "ALTER TABLE ... EXCHANGE PARTITION", True)]


def _alter(reader: _Reader) -> Effect | None:
    reader.skip_any({"ONLINE", "OFFLINE", "IGNORE"})
    if not reader.skip("TABLE"):
        return None
    reader.skip("IF", "EXISTS")
    altered = reader.name()
    depth = 0
    while altered is not None and reader.at < len(reader.tokens):
        word = reader.peek()
        depth += (word == "(") - (word == ")")
        if depth == 0 and word in ("RENAME", "TRUNCATE", "DROP", "IMPORT", "WITH"):
            for words, action, names_table in _ALTER_CLAUSES:
                if reader.skip(*words):
                    return Effect(action, _names(altered, reader.name() if names_table else None))
            if word == "RENAME" and reader.peek(1) not in ("COLUMN", "INDEX", "KEY", "CONSTRAINT"):
                reader.at += 1  # ALTER TABLE a RENAME b
                return Effect("ALTER TABLE ... RENAME", _names(altered, reader.name()))
        reader.at += 1
    return None


def _dml(reader: _Reader) -> Effect | None:
    """INSERT/REPLACE: the table written into. UPDATE/DELETE: every table of the table references
    (any of them may be changed, and a DELETE's targets may be aliases)."""
    depth = 0
    while reader.at < len(reader.tokens) and not (depth == 0 and reader.peek() in _DML):  # past WITH ... AS (...)
        depth += (reader.peek() == "(") - (reader.peek() == ")")
        reader.at += 1
    verb = reader.peek()
    if not verb:
        return None
    reader.at += 1
    if verb in ("INSERT", "REPLACE"):
        reader.skip_any(_INSERT_MODIFIERS)
        return Effect(verb, _names(reader.name()))
    end = {"SET"} if verb == "UPDATE" else {"WHERE", "ORDER", "LIMIT", "RETURNING"}
    tables, before, depth = [], verb, 0
    while reader.at < len(reader.tokens) and not (depth == 0 and reader.peek() in end):
        word = reader.peek()
        if before in _TABLE_BEFORE and reader.tokens[reader.at].name and word not in _TABLE_BEFORE:
            tables += _names(reader.name())
            before = ""
            continue
        depth += (word == "(") - (word == ")")
        before = word
        reader.at += 1
    return Effect(verb, tables)


def xa_id(statement: str) -> str | None:
    """The XA id an ``XA START`` statement names, as the binlog spells it (X'..',X'..',format), else None."""
    match = re.match(r"\s*XA\s+(?:START|BEGIN)\s+(.+?)\s*(?:JOIN|RESUME)?\s*$", statement, re.I | re.S)
    return match.group(1) if match else None


def xa_text(format_id: int, gtrid: bytes, bqual: bytes) -> str:
    """An XA id as a user writes it in XA COMMIT / XA ROLLBACK: 'gtrid'[,'bqual'[,format]]."""
    def quoted(part: bytes) -> str:
        text = part.decode(errors="replace")
        return "'" + text.replace("'", "''") + "'" if text.isprintable() else f"X'{part.hex()}'"
    parts = [quoted(gtrid)] + ([quoted(bqual)] if bqual or format_id != 1 else [])
    return ",".join(parts + ([str(format_id)] if format_id != 1 else []))
