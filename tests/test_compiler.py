"""SQL compilation through Feldera's program statuses."""

from __future__ import annotations

import asyncio

import pytest

from pipeline_operator.compiler import Compiler, SqlProblem, build_artifact, parse_program, sql_error_details
from pipeline_operator.models import ProgramStatus, program_digest

GOOD = "CREATE TABLE t (x INT);\nCREATE MATERIALIZED VIEW v AS SELECT x FROM t;"


def test_a_program_declares_tables_and_views():
    artifact = build_artifact(GOOD, parse_program(GOOD))
    assert artifact["tables"] == ["t"] and artifact["views"] == ["v"] and artifact["digest"] == program_digest(GOOD)


@pytest.mark.parametrize(("sql", "line"), [
    ("CREATE TABLE t (x INT", 1),
    ("CREATE TABLE t (x INT);\n\n  SELEC oops", 3),
    ("CREATE TABLE t (x INT);\nSELECT 1;", 2),
])
def test_sql_errors_name_line_and_column(sql, line):
    with pytest.raises(SqlProblem) as problem:
        parse_program(sql)
    assert problem.value.line == line and problem.value.column >= 1
    message = sql_error_details(problem.value)["sql_compilation"]["messages"][0]
    assert message["start_line_number"] == line and message["message"]


def test_feldera_declarations_are_accepted():
    assert len(parse_program("DECLARE RECURSIVE VIEW r (x INT);\n" + GOOD)) == 2


def test_the_compiler_walks_the_statuses_and_keeps_the_artifact(tmp_path):
    async def scenario():
        compiler = Compiler(tmp_path)
        woken = asyncio.Event()
        digest = program_digest(GOOD)
        assert compiler.observe(digest).status is ProgramStatus.PENDING
        compiler.ensure(digest, GOOD, woken.set)
        await asyncio.wait_for(woken.wait(), 10)
        for _ in range(100):
            if compiler.observe(digest).status is ProgramStatus.SUCCESS:
                break
            await asyncio.sleep(0.05)
        bad = "CREATE TABLE t (x INT"
        compiler.ensure(program_digest(bad), bad, lambda: None)
        for _ in range(100):
            if compiler.observe(program_digest(bad)).status.is_failed:
                break
            await asyncio.sleep(0.05)
        return compiler.observe(digest), compiler.observe(program_digest(bad)), compiler.artifact(digest)
    good, bad, artifact = asyncio.run(scenario())
    assert good.status is ProgramStatus.SUCCESS and artifact["sql"] == GOOD
    assert bad.status is ProgramStatus.SQL_ERROR and bad.error["sql_compilation"]["messages"]
    assert Compiler(tmp_path).observe(program_digest(GOOD)).status is ProgramStatus.SUCCESS  # after a restart


def test_a_stale_request_is_ignored(tmp_path):
    async def scenario():
        compiler = Compiler(tmp_path)
        compiler.ensure("not-the-digest-of-this-sql", GOOD, lambda: None)
        await asyncio.sleep(0.1)
        return compiler.observe("not-the-digest-of-this-sql").status
    assert asyncio.run(scenario()) is ProgramStatus.PENDING
