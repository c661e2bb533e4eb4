"""Audit images hold the mapped target columns only: a column the mapping does not copy never
reaches the target database (its audit log and dead letters included)."""

from __future__ import annotations

import json
from decimal import Decimal

import psycopg

from cdc.mapping import ColumnSpec, FilterSpec, TableMapping, TableSpec

EMAIL = "ola.nordmann@example.no"
MAPPING = """tables:
  customers:
    target: kunder
    columns:
      kundenr: id
      navn: {from: name, transforms: [upper]}
      poststed: city
    filter:
      - {column: status, op: '!=', value: draft}
"""


def _setup(ws) -> None:
    ws.sql(ws.source, "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT, "
                      "city TEXT, status TEXT NOT NULL);\n"
                      f"INSERT INTO customers VALUES (1, 'Kari', '{EMAIL}', 'Oslo', 'active');\n"
                      f"INSERT INTO customers VALUES (2, 'Per', '{EMAIL}', 'Bergen', 'active')")
    (ws.root / "map.yaml").write_text(MAPPING, encoding="utf-8")
    ws.write_config("source: src\ntarget: dst\nmapping: map.yaml\non_error: park")
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    # A short target column, so that one change is refused and parked.
    ws.sql(ws.target, "DROP TABLE kunder; CREATE TABLE kunder (kundenr INTEGER PRIMARY KEY, navn VARCHAR(12), "
                      "poststed TEXT)")


def test_audit_images_are_the_mapped_target_rows(ws):
    _setup(ws)
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0  # snapshot
    ws.sql(ws.source, f"UPDATE customers SET city = 'Ålesund', email = 'ny.{EMAIL}' WHERE id = 1;\n"
                      "UPDATE customers SET status = 'draft' WHERE id = 2;\n"  # leaves the filter: a delete
                      f"INSERT INTO customers VALUES (3, 'Knut', '{EMAIL}', 'Tromsø', 'active');\n"
                      f"INSERT INTO customers VALUES (4, 'Bartholomeus Olsen', '{EMAIL}', 'Bodø', 'active');\n"
                      "DELETE FROM customers WHERE id = 3")
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 0 and "1 parked" in result.stdout, result.stdout + result.stderr
    audit = [(op, json.loads(before) if before else None, json.loads(after) if after else None)
             for op, before, after in ws.query(ws.target, "SELECT op, before, after FROM cdc_audit_log "
                                                          "WHERE op <> 'snapshot' ORDER BY id")]
    assert audit == [
        ("update", {"kundenr": 1, "navn": "KARI", "poststed": "Oslo"},
         {"kundenr": 1, "navn": "KARI", "poststed": "Ålesund"}),
        ("update", {"kundenr": 2, "navn": "PER", "poststed": "Bergen"},
         {"kundenr": 2, "navn": "PER", "poststed": "Bergen"}),
        ("insert", None, {"kundenr": 3, "navn": "KNUT", "poststed": "Tromsø"}),
        ("delete", {"kundenr": 3, "navn": "KNUT", "poststed": "Tromsø"}, None),
        # parked (the name is too long for its column): audited as parked, through the mapping too
        ("insert", None, {"kundenr": 4, "navn": "BARTHOLOMEUS OLSEN", "poststed": "Bodø"})]
    # The dead letter keeps what the mapping reads (to apply it again), not the e-mail address.
    (change,) = [json.loads(c) for (c,) in ws.query(ws.target, "SELECT change FROM cdc_dead_letters")]
    assert change["after"] == {"id": 4, "name": "Bartholomeus Olsen", "city": "Bodø", "status": "active"}
    # Nowhere in the target database file: not a row, not an audit image, not a dead letter.
    assert EMAIL.encode() not in ws.target.read_bytes()
    # The audit report reads the mapped images.
    trail = ws.cdc("audit", str(ws.config), "--table", "kunder", "--key", "1")
    assert trail.returncode == 0 and "poststed: Oslo -> Ålesund" in trail.stdout, trail.stdout + trail.stderr
    assert "email" not in trail.stdout
    entries = json.loads(ws.cdc("audit", str(ws.config), "--format", "json").stdout)["entries"]
    assert all("email" not in json.dumps(e) for e in entries)


def test_audit_of_a_large_transaction_through_copy_holds_no_unmapped_column(ws, pg_url):
    """PostgreSQL -> PostgreSQL, a mapping that copies some columns under their own names (the
    identity fast path) and a transaction big enough for the audit rows to go by COPY."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text)")
        conn.execute("ALTER TABLE customers REPLICA IDENTITY FULL")  # before images in the stream
        conn.execute("INSERT INTO customers SELECT i, 'navn ' || i, %s FROM generate_series(1, 300) i", (EMAIL,))
    (ws.root / "map.yaml").write_text("tables:\n  customers:\n    columns:\n      id: id\n      name: name\n",
                                      encoding="utf-8")
    ws.config.write_text(f"connections:\n  src: {pg_url}\n  dst: sqlite:///target.db\npairs:\n  p:\n"
                         "    source: src\n    target: dst\n    capture: logical\n    mapping: map.yaml\n",
                         encoding="utf-8")
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE customers SET name = name || '!', email = 'x' || email")
    assert "300 changes applied" in ws.cdc("run", "--once", str(ws.config)).stdout
    images = ws.query(ws.target, "SELECT before, after FROM cdc_audit_log WHERE op = 'update' ORDER BY id")
    assert len(images) == 300
    assert json.loads(images[0][0]) == {"id": 1, "name": "navn 1"}
    assert json.loads(images[0][1]) == {"id": 1, "name": "navn 1!"}
    assert EMAIL.encode() not in ws.target.read_bytes()


def test_an_old_image_a_transform_now_refuses_is_recorded_not_fatal():
    """The before image of an update was written before a transform was added: the audit records
    why its value does not map instead of failing the change; a dead letter keeps every column the
    mapping reads (columns, filters, key) and nothing else."""
    spec = TableSpec("invoices", "fakturaer", columns=(ColumnSpec("nr", "id"),
                                                       ColumnSpec("belop", "amount", (("decimal", 2),))),
                     filters=(FilterSpec("status", "!=", "draft"),))
    mapping = TableMapping(spec, ["id", "amount", "status", "email"], ("id",), "UTC")
    image = mapping.image({"id": 7, "amount": Decimal("3.005"), "status": "open", "email": EMAIL}, (7,))
    assert image["nr"] == 7 and set(image) == {"nr", "belop"}
    assert "$error" in image["belop"] and "3.005" in image["belop"]["$error"]
    assert mapping.image({"id": 7, "amount": Decimal("3.5"), "email": EMAIL}) == {"nr": 7, "belop": Decimal("3.50")}
    assert mapping.read_columns() == {"id", "amount", "status"}


def test_audit_key_with_a_comma_in_a_value_is_written_in_double_quotes(ws):
    """A text key holding a comma ('Berg, Ola') was split in two and found nothing, exit 0."""
    ws.sql(ws.source, "CREATE TABLE people (name TEXT NOT NULL, no INTEGER NOT NULL, note TEXT, "
                      "PRIMARY KEY (name, no)); INSERT INTO people VALUES ('Berg, Ola', 7, 'a'), ('Berg', 7, 'b')")
    ws.write_config("source: src\ntarget: dst\ntables: [people]")
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    ws.sql(ws.source, "UPDATE people SET note = 'c' WHERE name = 'Berg, Ola'")
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    trail = ws.cdc("audit", str(ws.config), "--table", "people", "--key", '"Berg, Ola",7', "--format", "json")
    entries = json.loads(trail.stdout)["entries"]
    assert [(e["op"], e["key"]) for e in entries] == [("snapshot", ["Berg, Ola", 7]), ("update", ["Berg, Ola", 7])], \
        trail.stdout
