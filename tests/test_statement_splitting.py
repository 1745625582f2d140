"""Splitting migration files into statements (no database needed)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from shareddb._migrations.sqlsplit import Statement, split_postgres, split_sqlite


def texts(statements: Sequence[Statement]) -> list[str]:
    return [s.text for s in statements]


def test_postgres_split_respects_quotes_comments_and_dollar_quotes() -> None:
    sql = (
        "-- leading comment; not a statement\n"
        "CREATE TABLE \"a;b\" (x text DEFAULT 'x;y');\n"
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;\n"
        "CREATE FUNCTION g() RETURNS text LANGUAGE sql AS $fn$ SELECT '$$;' $fn$;\n"
        "/* outer /* nested; */ still; */ SELECT E'it\\'s;', 'it''s;';\n"
        "SELECT $1, a$b FROM t;\n"
        "SELECT 1 -- trailing; comment\n"
    )
    stmts = split_postgres(sql)
    assert texts(stmts) == [
        "CREATE TABLE \"a;b\" (x text DEFAULT 'x;y');",
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;",
        "CREATE FUNCTION g() RETURNS text LANGUAGE sql AS $fn$ SELECT '$$;' $fn$;",
        "SELECT E'it\\'s;', 'it''s;';",
        "SELECT $1, a$b FROM t;",
        "SELECT 1 -- trailing; comment",
    ]
    assert [s.number for s in stmts] == [1, 2, 3, 4, 5, 6]
    assert [s.line for s in stmts] == [2, 3, 4, 5, 6, 7]


def test_statement_line_skips_leading_comments_and_blank_lines() -> None:
    sql = "SELECT 1;\n\n-- about the next one\n/* more\n   words */\n\nSELECT\n  2;\n"
    for split in (split_postgres, split_sqlite):
        stmts = split(sql)
        assert [(s.number, s.line, s.first_line) for s in stmts] == [
            (1, 1, "SELECT 1;"),
            (2, 7, "SELECT"),
        ]


def test_comment_only_and_empty_files_have_no_statements() -> None:
    for split in (split_postgres, split_sqlite):
        assert split("") == []
        assert split("\n\n  \n") == []
        assert split("-- just a note; really\n/* and; this */\n") == []


def test_sqlite_split_keeps_trigger_bodies_whole() -> None:
    sql = (
        "CREATE TABLE t (x TEXT);\n"
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n"
        "  INSERT INTO log VALUES ('a;b');\n"
        "  UPDATE t SET x = 'c;' WHERE rowid = NEW.rowid;\n"
        "END;\n"
        "INSERT INTO t VALUES ('it''s; ok')"
    )
    stmts = split_sqlite(sql)
    assert len(stmts) == 3
    assert stmts[1].text.startswith("CREATE TRIGGER tr")
    assert stmts[1].text.endswith("END;")
    assert stmts[2].line == 6
    assert all(sqlite3.complete_statement(s.text + ";") for s in stmts)


def test_unterminated_last_statement_is_kept() -> None:
    assert texts(split_postgres("SELECT 1; SELECT 2")) == ["SELECT 1;", "SELECT 2"]
    assert texts(split_sqlite("SELECT 1; SELECT 2")) == ["SELECT 1;", "SELECT 2"]


def test_crlf_files_split_with_the_right_lines() -> None:
    sql = "SELECT 1;\r\n\r\nSELECT 'a;b';\r\n"
    for split in (split_postgres, split_sqlite):
        stmts = split(sql)
        assert [(s.line, s.text) for s in stmts] == [(1, "SELECT 1;"), (3, "SELECT 'a;b';")]


# Statements built from pieces that contain semicolons where they must not split.
_text = st.text(alphabet=st.sampled_from("ab;'\"$-/* \n"), max_size=12)
_literal = _text.map(lambda s: "'" + s.replace("'", "''") + "'")
_ident = _text.map(lambda s: '"' + s.replace('"', '""') + '"')
_dollar = _text.filter(lambda s: "$q$" not in s and not s.endswith("$")).map(lambda s: f"$q${s}$q$")
_block = _text.filter(lambda s: "*/" not in s and "/*" not in s and not s.endswith("/")).map(
    lambda s: f"/*{s}*/"
)
_piece = st.one_of(_literal, _ident, _dollar, _block, st.sampled_from(["x", "1", "f(y)"]))
_statement = st.lists(_piece, min_size=1, max_size=5).map(lambda parts: "SELECT " + " ".join(parts))


@given(st.lists(_statement, min_size=1, max_size=6))
def test_postgres_split_round_trips_generated_statements(statements: list[str]) -> None:
    sql = "".join(f"{s};\n" for s in statements)
    assert texts(split_postgres(sql)) == [f"{s};" for s in statements]


@given(st.lists(_statement, min_size=1, max_size=6))
def test_sqlite_split_round_trips_generated_statements(statements: list[str]) -> None:
    statements = [s for s in statements if "$q$" not in s] or ["SELECT 1"]
    sql = "".join(f"{s};\n" for s in statements)
    assert texts(split_sqlite(sql)) == [f"{s};" for s in statements]
