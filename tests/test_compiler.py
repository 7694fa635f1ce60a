"""SQL compilation through Feldera's program statuses."""

from __future__ import annotations

import asyncio
import json

import pytest

from pipeline_operator.feldera.compiler import Compiler, SqlProblem, build_artifact, parse_program, sql_error_details
from pipeline_operator.feldera.compiler.sql import snippet, source_lines
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
    message = sql_error_details(problem.value, sql)["sql_compilation"]["messages"][0]
    assert message["start_line_number"] == line and message["message"]
    assert f"{line:5d}|" in message["snippet"] and "^" in message["snippet"]


# Feldera's own example of a message of its SQL compiler (SqlCompilerMessage in pipeline-manager's
# db/types/program.rs at c44a2456a): the range, and the snippet its SourceFileContents.getFragment writes.
FELDERA_PROGRAM = "CREATE TABLE t (\n   c INT PRIMARY KEY\n);\n"
FELDERA_SNIPPET = "    2|   c INT PRIMARY KEY\n         ^^^^^\n    3|);\n"


def test_the_snippet_is_the_one_felderas_compiler_writes():
    assert snippet(source_lines(FELDERA_PROGRAM), 2, 4, 2, 8) == FELDERA_SNIPPET
    lines = [f"line {i}" for i in range(1, 11)]
    # The last line: the line before it too. An invalid range: no snippet.
    assert snippet(lines, 10, 1, 10, 4) == "    9|line 9\n   10|line 10\n      ^^^^\n"
    assert snippet(lines, 0, 0, 0, 0) == ""
    # Several lines: each of them, numbered, without carets; more than five: the first two, "...", the last.
    assert snippet(lines, 2, 3, 4, 1) == "    2|line 2\n    3|line 3\n    4|line 4\n"
    assert snippet(lines, 1, 1, 8, 2) == "    1|line 1\n    2|line 2\n      ...\n    8|line 8\n"
    # A range that ends on the line after the last ends on the last.
    assert snippet(lines, 9, 1, 11, 1) == "    9|line 9\n   10|line 10\n"
    # A very long line is cut.
    long = snippet(["x" * 100_000], 1, 99_990, 1, 99_995)
    assert len(long) < 2_000 and long.startswith("    1|xxx")


def test_a_sql_error_has_felderas_message_shape_with_the_offending_lines():
    sql = "CREATE TABLE t (id INT,\n  x INT PRIMARY\n);"
    with pytest.raises(SqlProblem) as problem:
        parse_program(sql)
    details = sql_error_details(problem.value, sql)
    assert details["rust_compilation"] is None and details["system_error"] is None
    assert details["sql_compilation"] == {"exit_code": 1, "messages": [{
        "start_line_number": 2, "start_column": 9, "end_line_number": 2, "end_column": 15, "warning": False,
        "error_type": "SyntaxError", "message": "Expecting )",
        "snippet": "    2|  x INT PRIMARY\n              ^^^^^^^\n    3|);\n"}]}
    # A statement that is not a declaration: the whole statement.
    sql = "CREATE TABLE t (x INT);\nSELECT 1\n  FROM t;"
    with pytest.raises(SqlProblem) as problem:
        parse_program(sql)
    message = sql_error_details(problem.value, sql)["sql_compilation"]["messages"][0]
    assert (message["start_line_number"], message["start_column"], message["end_line_number"],
            message["end_column"]) == (2, 1, 3, 8)
    assert message["snippet"] == "    2|SELECT 1\n    3|  FROM t;\n"


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


# --- program_info: Feldera's schema of the program's tables and views ---------------------------

PROGRAM = """CREATE TABLE orders (
    id BIGINT NOT NULL PRIMARY KEY,
    amount DECIMAL(10, 2),
    note VARCHAR,
    placed_at TIMESTAMP,
    tags VARCHAR ARRAY,
    "CustomerName" VARCHAR(40)
) WITH ('materialized' = 'true');
CREATE TABLE customers (name VARCHAR(40) NOT NULL, city VARCHAR);
CREATE MATERIALIZED VIEW totals AS
    SELECT "CustomerName", COUNT(*) AS order_count, SUM(amount) AS "Total"
    FROM orders GROUP BY "CustomerName";
CREATE VIEW enriched AS
    SELECT o.id, c.city, o.tags FROM orders AS o LEFT JOIN customers AS c ON o."CustomerName" = c.name;
"""


def _field(name, columntype, case_sensitive=False):
    return {"name": name, "case_sensitive": case_sensitive, "columntype": columntype, "unused": False}


VARCHAR = {"nullable": True, "precision": -1, "type": "VARCHAR"}  # VARCHAR without a length: -1

ORDERS = {
    "name": "orders", "case_sensitive": False,
    "fields": [
        _field("id", {"nullable": False, "type": "BIGINT"}),
        _field("amount", {"nullable": True, "precision": 10, "scale": 2, "type": "DECIMAL"}),
        _field("note", VARCHAR),
        _field("placed_at", {"nullable": True, "precision": 6, "type": "TIMESTAMP"}),
        _field("tags", {"component": VARCHAR, "nullable": True, "type": "ARRAY"}),
        _field("CustomerName", {"nullable": True, "precision": 40, "type": "VARCHAR"}, case_sensitive=True),
    ],
    "primary_key": ["id"],
    "properties": {"materialized": {
        "value": "true",
        "key_position": {"start_line_number": 8, "start_column": 9, "end_line_number": 8, "end_column": 22},
        "value_position": {"start_line_number": 8, "start_column": 26, "end_line_number": 8, "end_column": 31},
    }},
    "materialized": True,
    "foreign_keys": [],
}
CUSTOMERS = {
    "name": "customers", "case_sensitive": False,
    "fields": [_field("name", {"nullable": False, "precision": 40, "type": "VARCHAR"}), _field("city", VARCHAR)],
    "materialized": False,
    "foreign_keys": [],
}
ERROR_VIEW = {
    "name": "error_view", "case_sensitive": False,
    "fields": [_field(name, {"nullable": False, "precision": -1, "type": "VARCHAR"})
               for name in ("table_or_view_name", "message", "metadata")],
    "materialized": False,
}
TOTALS = {
    "name": "totals", "case_sensitive": False,
    "fields": [
        _field("CustomerName", {"nullable": True, "precision": 40, "type": "VARCHAR"}, case_sensitive=True),
        _field("order_count", {"nullable": False, "type": "BIGINT"}),
        # SUM of a DECIMAL: the largest precision, the argument's scale (Calcite's deriveSumType)
        _field("Total", {"nullable": True, "precision": 38, "scale": 2, "type": "DECIMAL"}, case_sensitive=True),
    ],
    "materialized": True,
}
ENRICHED = {
    "name": "enriched", "case_sensitive": False,
    "fields": [
        _field("id", {"nullable": False, "type": "BIGINT"}),
        _field("city", VARCHAR),  # nullable twice over: declared so, and on the LEFT JOIN's outer side
        _field("tags", {"component": VARCHAR, "nullable": True, "type": "ARRAY"}),
    ],
    "materialized": False,
}


def _info(sql: str) -> dict:
    return build_artifact(sql, parse_program(sql))["program_info"]


def test_program_info_describes_tables_and_views_as_feldera_does():
    artifact = build_artifact(PROGRAM, parse_program(PROGRAM))
    assert artifact["tables"] == ["orders", "customers"] and artifact["views"] == ["totals", "enriched"]
    info = artifact["program_info"]
    assert info == {"schema": {"inputs": [ORDERS, CUSTOMERS], "outputs": [ERROR_VIEW, TOTALS, ENRICHED]},
                    "udf_stubs": "", "input_connectors": {}, "output_connectors": {}}
    assert json.loads(json.dumps(artifact)) == artifact  # the artifact is written as JSON
    # The property positions point at the quoted literals, as the SQL compiler's do.
    line = PROGRAM.splitlines()[7]
    assert line[9 - 1:22] == "'materialized'" and line[26 - 1:31] == "'true'"


def test_the_feldera_sdk_reads_the_tables_and_views():
    from feldera.rest.pipeline import Pipeline

    info = _info(PROGRAM)
    pipeline = Pipeline.from_dict({"name": "shop", "program_code": PROGRAM, "program_info": info})
    assert [t.name for t in pipeline.tables] == ["orders", "customers"]
    assert [v.name for v in pipeline.views] == ["error_view", "totals", "enriched"]
    orders, totals = pipeline.tables[0], pipeline.views[1]
    assert orders.materialized and not orders.case_sensitive and orders.fields == ORDERS["fields"]
    assert [f["name"] for f in orders.fields] == ["id", "amount", "note", "placed_at", "tags", "CustomerName"]
    assert totals.materialized and totals.fields == TOTALS["fields"]
    assert not pipeline.views[2].materialized and pipeline.views[2].fields == ENRICHED["fields"]


def test_names_follow_feldera_case_rules():
    info = _info('CREATE TABLE "Mixed" (Plain INT, "Quoted" INT, "lower" INT);\n'
                 'CREATE VIEW Shout (A, "B") AS SELECT Plain, "Quoted" FROM "Mixed";\n'
                 'CREATE VIEW derived AS SELECT plain AS Alias, "Quoted", plain + 1, "lower" AS "Kept" FROM "Mixed";')
    mixed, shout, derived = info["schema"]["inputs"][0], *info["schema"]["outputs"][1:]
    assert (mixed["name"], mixed["case_sensitive"]) == ("Mixed", True)
    assert [(f["name"], f["case_sensitive"]) for f in mixed["fields"]] == [
        ("plain", False), ("Quoted", True), ("lower", True)]
    assert (shout["name"], shout["case_sensitive"]) == ("shout", False)
    assert [(f["name"], f["case_sensitive"]) for f in shout["fields"]] == [("a", False), ("B", True)]
    # Columns named by the query: case sensitive when not all lower case; Calcite's EXPR$n
    assert [(f["name"], f["case_sensitive"]) for f in derived["fields"]] == [
        ("alias", False), ("Quoted", True), ("EXPR$2", True), ("Kept", True)]


@pytest.mark.parametrize(("declaration", "columntype"), [
    ("BOOLEAN", {"nullable": True, "type": "BOOLEAN"}),
    ("TINYINT", {"nullable": True, "type": "TINYINT"}),
    ("SMALLINT", {"nullable": True, "type": "SMALLINT"}),
    ("INT", {"nullable": True, "type": "INTEGER"}),
    ("INT8", {"nullable": True, "type": "BIGINT"}),
    ("BIGINT UNSIGNED", {"nullable": True, "type": "UBIGINT"}),
    ("REAL", {"nullable": True, "type": "REAL"}),
    ("DOUBLE", {"nullable": True, "type": "DOUBLE"}),
    ("DECIMAL", {"nullable": True, "precision": 38, "scale": 0, "type": "DECIMAL"}),
    ("DECIMAL(5)", {"nullable": True, "precision": 5, "scale": 0, "type": "DECIMAL"}),
    ("CHAR(3)", {"nullable": True, "precision": 3, "type": "CHAR"}),
    ("VARCHAR(10) NOT NULL", {"nullable": False, "precision": 10, "type": "VARCHAR"}),
    ("TEXT", {"nullable": True, "precision": -1, "type": "VARCHAR"}),
    ("BINARY(4)", {"nullable": True, "precision": 4, "type": "BINARY"}),
    ("VARBINARY", {"nullable": True, "precision": -1, "type": "VARBINARY"}),
    ("DATE", {"nullable": True, "type": "DATE"}),
    ("TIME", {"nullable": True, "precision": 9, "type": "TIME"}),
    ("TIMESTAMP(3)", {"nullable": True, "precision": 3, "type": "TIMESTAMP"}),
    ("TIMESTAMP WITH TIME ZONE", {"nullable": True, "precision": 6, "type": "TIMESTAMP_TZ"}),
    ("INTERVAL DAY TO SECOND", {"nullable": True, "precision": 2, "scale": 6, "type": "INTERVAL_DAY_SECOND"}),
    ("INTERVAL YEAR TO MONTH", {"nullable": True, "type": "INTERVAL_YEAR_MONTH"}),
    ("UUID", {"nullable": True, "type": "UUID"}),
    ("VARIANT", {"nullable": True, "type": "VARIANT"}),
    ("INT ARRAY ARRAY NOT NULL", {"component": {"component": {"nullable": True, "type": "INTEGER"},
                                                "nullable": True, "type": "ARRAY"},
                                  "nullable": False, "type": "ARRAY"}),
    ("MAP<VARCHAR, INT>", {"key": {"nullable": False, "precision": -1, "type": "VARCHAR"}, "nullable": True,
                           "type": "MAP", "value": {"nullable": True, "type": "INTEGER"}}),
])
def test_column_types_are_feldera_types(declaration, columntype):
    sql = f"CREATE TABLE t (c {declaration}, after_it INT);\nCREATE VIEW v AS SELECT c FROM t;"
    info = _info(sql)
    assert info["schema"]["inputs"][0]["fields"][0]["columntype"] == columntype
    assert info["schema"]["outputs"][1]["fields"][0]["columntype"] == columntype  # a view keeps it


def test_table_level_keys_and_references():
    table = _info("CREATE TABLE t (a INT, b INT NOT NULL, c INT DEFAULT 5, PRIMARY KEY (b, a), "
                  "FOREIGN KEY (c) REFERENCES s(x));")["schema"]["inputs"][0]
    assert table["primary_key"] == ["a", "b"]  # in column order, as the SQL compiler lists them
    assert [f["columntype"]["nullable"] for f in table["fields"]] == [False, False, True]
    assert table["fields"][2]["default"] == "5"
    assert table["foreign_keys"] == [{"source": "t", "columns": ["c"], "refers": "s", "tocolumns": ["x"]}]


WEIRD = """DECLARE RECURSIVE VIEW reach (src BIGINT NOT NULL, dst BIGINT);
CREATE TABLE edges (src BIGINT NOT NULL, dst BIGINT, labels VARCHAR ARRAY);
CREATE FUNCTION score(a BIGINT, b BIGINT) RETURNS DOUBLE;
CREATE VIEW reach AS
    SELECT src, dst FROM edges UNION SELECT r.src, e.dst FROM reach r JOIN edges e ON r.dst = e.src;
CREATE VIEW scored AS SELECT src, score(src, dst) AS s, some_function_nobody_knows(labels) FROM edges;
CREATE VIEW over_nothing AS SELECT * FROM not_declared_anywhere;
"""


def test_weird_but_valid_programs_compile_with_a_program_info(tmp_path):
    async def scenario():
        compiler = Compiler(tmp_path)
        digest = program_digest(WEIRD)
        compiler.ensure(digest, WEIRD, lambda: None)
        for _ in range(200):
            if compiler.observe(digest).status is ProgramStatus.SUCCESS:
                break
            await asyncio.sleep(0.05)
        return compiler.observe(digest), compiler.artifact(digest)
    observation, artifact = asyncio.run(scenario())
    assert observation.status is ProgramStatus.SUCCESS, observation.error
    schema = artifact["program_info"]["schema"]
    assert [r["name"] for r in schema["inputs"]] == ["edges"]  # a declaration is not an input
    reach, scored, over_nothing = schema["outputs"][1:]
    # A recursive view has the columns its declaration gives it.
    assert reach["fields"] == [_field("src", {"nullable": False, "type": "BIGINT"}),
                               _field("dst", {"nullable": True, "type": "BIGINT"})]
    # Functions whose result type is unknown here get the fallback type: a nullable VARIANT.
    assert scored["fields"] == [_field("src", {"nullable": False, "type": "BIGINT"}),
                                _field("s", {"nullable": True, "type": "VARIANT"}),
                                _field("EXPR$2", {"nullable": True, "type": "VARIANT"}, case_sensitive=True)]
    assert over_nothing["fields"] == []  # SELECT * over something unknown: the columns are unknown


def test_program_info_never_fails_a_compilation(monkeypatch):
    from pipeline_operator.feldera.compiler import schema, views

    def broken(*args, **kwargs):
        raise RuntimeError("sqlglot had a bad day")

    monkeypatch.setattr(views, "qualify", broken)  # views cannot be typed: names only
    views = _info(PROGRAM)["schema"]["outputs"]
    assert [f["name"] for f in views[1]["fields"]] == ["CustomerName", "order_count", "Total"]
    assert {f["columntype"]["type"] for v in views[1:] for f in v["fields"]} == {"VARIANT"}
    monkeypatch.setattr(schema, "program_schema", broken)  # nothing can be worked out
    artifact = build_artifact(PROGRAM, parse_program(PROGRAM))
    assert artifact["tables"] == ["orders", "customers"]
    assert artifact["program_info"]["schema"] == {"inputs": [], "outputs": [ERROR_VIEW]}


def test_the_array_suffix_is_read_and_positions_are_kept():
    sql = "CREATE TABLE t (a INT ARRAY, b INT);\nCREATE VIEW v AS SELECT ARRAY[a[1], b] AS c FROM t;\n  SELEC oops"
    with pytest.raises(SqlProblem) as problem:
        parse_program(sql)
    assert (problem.value.line, problem.value.column) == (3, 3)
    info = _info(sql.rsplit("\n", 1)[0])
    assert info["schema"]["outputs"][1]["fields"] == [
        _field("c", {"component": {"nullable": True, "type": "INTEGER"}, "nullable": True, "type": "ARRAY"})]


def _validator(components: dict, name: str):
    from jsonschema import Draft202012Validator

    return Draft202012Validator({**components["schemas"][name], "components": components})


@pytest.mark.parametrize("sql", [PROGRAM, WEIRD, GOOD])
@pytest.mark.parametrize("schema", ["PartialProgramInfo", "ProgramInfo"])
def test_program_info_validates_against_feldera_openapi(sql, schema):
    from .test_models import feldera_components
    components = feldera_components()  # Feldera c44a2456a's schemas
    info = _info(sql)
    _validator(components, schema).validate(info)
    # c44's PartialProgramInfo (what GET /v0/pipelines/{name} returns) leaves the schema any JSON (the SQL
    # compiler's, passed on): its ProgramSchema types it in detail.
    _validator(components, "ProgramSchema").validate(info["schema"])


def test_the_openapi_check_would_catch_a_wrong_type():
    from .test_models import feldera_components
    components = feldera_components()  # Feldera c44a2456a's schemas
    info = _info(GOOD)
    _validator(components, "ProgramSchema").validate(info["schema"])
    info["schema"]["inputs"][0]["fields"][0]["columntype"]["type"] = "INT"  # SQL's name, not Feldera's
    assert not _validator(components, "ProgramSchema").is_valid(info["schema"])
