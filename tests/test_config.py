"""Config and mapping files: validation names file, line and key; the CLI exits 2 without a traceback."""

from __future__ import annotations

from decimal import Decimal

import pytest

from cdc.config import load_config, mask_url
from cdc.errors import ConfigError


def write(ws, text: str):
    ws.config.write_text(text, encoding="utf-8")
    return ws.config


BASE = """\
connections:
  src: sqlite:///source.db
  dst: sqlite:///target.db
pairs:
  erp_to_ledger:
    source: src
    target: dst
    tables: [entries]
"""


def test_a_valid_config_loads_with_defaults(ws):
    config = load_config(write(ws, BASE))
    pair = config.pairs["erp_to_ledger"]
    assert (pair.capture, pair.batch_size, pair.on_error, pair.poll_interval) == ("trigger", 1000, "stop", 1.0)
    assert pair.source.url == f"sqlite:///{ws.root / 'source.db'}"  # relative to the config file
    assert list(pair.mapping.tables) == ["entries"]


def test_misspelt_capture_names_key_value_choices_and_line(ws):
    text = BASE + "    capture: logcal\n"
    with pytest.raises(ConfigError) as err:
        load_config(write(ws, text))
    assert str(err.value) == ("pairs.erp_to_ledger.capture: 'logcal' is not one of trigger, timestamp, logical, "
                              "binlog, rowversion, change_tracking (did you mean 'logical'?) (config.yaml line 9)")


def test_capture_mode_the_adapter_lacks(ws):
    with pytest.raises(ConfigError, match=r"capture 'logical' is not supported by the sqlite adapter "
                                          r"\(supported: trigger, timestamp\) \(config.yaml line 9\)"):
        load_config(write(ws, BASE + "    capture: logical\n"))


def test_malformed_yaml_names_the_line(ws):
    with pytest.raises(ConfigError, match=r"malformed YAML: .*\(config.yaml line 4\)"):
        load_config(write(ws, "connections:\n  src: sqlite:///a.db\n  dst: [unclosed\npairs: {}\n"))


def test_unknown_connection(ws):
    with pytest.raises(ConfigError, match=r"pairs.erp_to_ledger.target: unknown connection 'ledger' "
                                          r"\(connections: src, dst\) \(config.yaml line 7\)"):
        load_config(write(ws, BASE.replace("target: dst", "target: ledger")))


def test_unknown_pair_key_is_an_error_not_ignored(ws):
    with pytest.raises(ConfigError, match=r"pairs.erp_to_ledger.batchsize: unknown key 'batchsize'.*line 9"):
        load_config(write(ws, BASE + "    batchsize: 10\n"))


@pytest.mark.parametrize("value", ["0", "-5", "ten", "2.5"])
def test_batch_size_must_be_a_positive_whole_number(ws, value):
    with pytest.raises(ConfigError, match=r"pairs.erp_to_ledger.batch_size: .* is not a positive whole number"):
        load_config(write(ws, BASE + f"    batch_size: {value}\n"))


def test_env_interpolation_with_default_and_missing(ws, monkeypatch):
    monkeypatch.setenv("CDC_TEST_TARGET_DB", "other.db")
    monkeypatch.delenv("CDC_TEST_UNSET", raising=False)
    text = BASE.replace("sqlite:///target.db", "sqlite:///${CDC_TEST_TARGET_DB}").replace(
        "sqlite:///source.db", "sqlite:///${CDC_TEST_UNSET:-fallback.db}")
    pair = load_config(write(ws, text)).pairs["erp_to_ledger"]
    assert pair.target.url.endswith("/other.db") and pair.source.url.endswith("/fallback.db")
    with pytest.raises(ConfigError, match=r"connections.src: environment variable CDC_TEST_UNSET is not set"):
        load_config(write(ws, BASE.replace("sqlite:///source.db", "sqlite:///${CDC_TEST_UNSET}")))


def test_tables_and_mapping_are_exclusive(ws):
    with pytest.raises(ConfigError, match="either 'tables: \\[..\\]'"):
        load_config(write(ws, BASE + "    mapping: m.yaml\n"))


def test_missing_mapping_file(ws):
    with pytest.raises(ConfigError, match=r"mapping file 'nope.yaml' not found.*line 8"):
        load_config(write(ws, BASE.replace("tables: [entries]", "mapping: nope.yaml")))


def test_mapping_errors_name_the_mapping_file_and_line(ws):
    (ws.root / "m.yaml").write_text(
        "tables:\n  entries:\n    target: posteringer\n    columns:\n      belop: {from: amount, transforms: [{round: 2}]}\n",
        encoding="utf-8")
    with pytest.raises(ConfigError, match=r"tables.entries.columns.belop.transforms.0: unknown transform 'round'.*"
                                          r"\(m.yaml line 5\)"):
        load_config(write(ws, BASE.replace("tables: [entries]", "mapping: m.yaml")))


def test_yaml_floats_stay_exact(ws):
    (ws.root / "m.yaml").write_text(
        "tables:\n  entries:\n    columns:\n      id: id\n      fee: {constant: 0.10}\n", encoding="utf-8")
    pair = load_config(write(ws, BASE.replace("tables: [entries]", "mapping: m.yaml"))).pairs["erp_to_ledger"]
    assert pair.mapping.tables["entries"].columns[1].transforms == (("constant", Decimal("0.10")),)


def test_mask_url_hides_the_password():
    assert mask_url("postgresql+psycopg://ledger:s3cret@db.example.no:5432/regnskap") == \
        "postgresql+psycopg://ledger:***@db.example.no:5432/regnskap"
    assert "s3cret" not in mask_url("not a url://u:s3cret@host")


def test_cli_prints_config_errors_without_traceback_and_exits_2(ws):
    write(ws, BASE + "    capture: logcal\n")
    result = ws.cdc("check", str(ws.config))
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: pairs.erp_to_ledger.capture: 'logcal' is not one of trigger, timestamp, "
                                     "logical, binlog, rowversion, change_tracking (did you mean 'logical'?) (config.yaml line 9)")
    assert "Traceback" not in result.stderr


def test_cli_password_in_url_is_masked_in_errors(ws):
    text = BASE.replace("dst: sqlite:///target.db", "dst: postgresql://ledger:s3cret@127.0.0.1:1/regnskap")
    result = ws.cdc("check", str(write(ws, text)))
    assert result.returncode in (1, 2)
    assert "s3cret" not in result.stdout + result.stderr


def test_check_creates_no_sqlite_file(ws):
    """`cdc check` changes nothing: a missing SQLite target (or source) is reported, not created."""
    ws.sql(ws.source, "CREATE TABLE entries (id INTEGER PRIMARY KEY, amount NUMERIC(10,2));")
    result = ws.cdc("check", str(write(ws, BASE)))
    assert result.returncode == 0, result.stderr
    assert "entries -> entries key (id)  [target table missing: cdc init creates it]" in result.stdout
    assert "target database: does not exist yet: `cdc init CONFIG` creates it" in result.stdout
    assert not ws.target.exists()
    ws.source.unlink()
    result = ws.cdc("check", str(ws.config))
    assert result.returncode == 1 and "source database" in result.stderr and "does not exist" in result.stderr
    assert not ws.source.exists() and not ws.target.exists()
    assert sorted(p.name for p in ws.root.iterdir()) == ["config.yaml"]


def test_the_state_head_every_command_checks_is_the_newest_migration():
    """Commands compare the version row with _migrate.HEAD without loading alembic: a new migration
    must move HEAD too, or every command would call the upgraded tables too new or too old."""
    from cdc.state import _migrate

    assert _migrate.HEAD == _migrate.head()


def test_a_pair_whose_target_table_is_a_source_table_in_the_same_database_is_refused(ws):
    """Written however the URL is (localhost or 127.0.0.1): every change written would be captured again."""
    text = ("connections:\n  src: postgresql://u:pw@127.0.0.1:5432/erp\n  dst: postgresql://u@localhost/erp\n"
            "pairs:\n  loop:\n    source: src\n    target: dst\n    capture: logical\n    tables: [ck]\n")
    with pytest.raises(ConfigError) as err:
        load_config(write(ws, text))
    assert ("pairs.loop: target table ck (connection dst) is the source table ck of pair loop in the same database: "
            "every change written would be captured again") in str(err.value)
    assert "pw" not in str(err.value)
    load_config(write(ws, text.replace("localhost/erp", "localhost/ledger")))  # another database: fine


def test_a_chain_of_pairs_is_allowed_and_a_circle_is_refused(ws):
    """erp -> ledger -> archive is a cascade; erp -> ledger -> erp sends every change round for ever."""
    text = ("connections:\n  erp: postgresql://u@127.0.0.1/erp\n  ledger: postgresql://u@127.0.0.1/ledger\n"
            "  far: postgresql://u@127.0.0.1/archive\npairs:\n"
            "  there:\n    source: erp\n    target: ledger\n    capture: logical\n    tables: [ck]\n"
            "  onward:\n    source: ledger\n    target: far\n    capture: logical\n    tables: [ck]\n")
    assert sorted(load_config(write(ws, text)).pairs) == ["onward", "there"]
    with pytest.raises(ConfigError) as err:
        load_config(write(ws, text.replace("target: far", "target: erp")))
    assert "the pairs write in a circle" in str(err.value)
    assert "pair there writes ck into ck (connection ledger)" in str(err.value)
    assert "pair onward writes ck into ck (connection erp)" in str(err.value)
