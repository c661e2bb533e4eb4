"""Reconciliation: does the target equal the source as mapped? Every difference, found fast; repair.

**Fingerprints** are the same whether Python or the database computes them, so each side of a pair
computes its own, in the database where it can:

* each value of a target column becomes its *canonical text*, by the target column's type:
  integers as digits; numerics with the column's scale (``12.50``); booleans ``1``/``0``;
  timestamps as microseconds since 1970-01-01 UTC (a naive value counts as UTC); dates
  ``YYYY-MM-DD``; bytes as lower-case hex; UUIDs lower-case; JSON sorted and compact; text as it is;
* a row's text is each column's text in target column order, joined by ``|``, ``\\N`` for NULL;
  text columns (which may hold ``|``) are written ``len:text``; the key's text is the same over the
  key columns;
* a row falls into bucket ``key % B`` for a single integer key, else ``int(md5(key text)[:8], 16) % B``,
  and has the digest ``int(md5(row text)[:15], 16)``. When both sides are PostgreSQL, both use its
  ``hashtextextended`` instead of MD5 (about twice as fast there).

**Algorithm** per table: B buckets of about 256 rows; each side gives count and sum of digests
per bucket in one pass (inside PostgreSQL or MySQL/MariaDB when every mapped column has an SQL
form there — an identity or renaming mapping, no transforms or filters — else the rows are read in
key order and fingerprinted in Python: SQLite, JSON/float columns, transforms). Buckets are a hash
of the key, not key ranges, so nothing depends on two databases sorting text alike. Buckets that
differ are read again as (key, digest); the keys that differ are read whole from both sides and
compared column by column through the mapping. A difference is re-read for ``settle`` seconds:
one that disappears was a change in flight (applied meanwhile), reported as settled, not as an error.
A key only one side's fingerprints had is looked up on the other side by key, never with --where.

**Safety**: every read runs in a read-only transaction; a --where may name only columns the mapping
copies unchanged under the same name; a repair deletes a target row only after reading that the
source has no row with its key at all. A value that cannot be read or fingerprinted is named by
table, key and column.

A repair holds the pair's claim from before the comparison to its last write, so it never writes
while `cdc run` streams the pair (see ``_repair``).

Modules: ``cdc.canonical`` (a value's canonical text), ``_canonical`` (row texts, digests, buckets),
``_side`` (one side's fingerprints and reads), ``_compare`` (one pair), ``_keys`` (differing keys on
both sides, how their rows differ), ``_repair``, ``_report`` (the report's data, recorded in
cdc_reconcile_runs; cdc.reports shapes it).
"""

from ._canonical import canonical
from ._compare import read_only, reconcile
from ._repair import RepairPlan, apply_repair, claimed, plan_source_keys, repair_plan
from ._report import ReconcileReport, RowDifference, TableReport, as_dict, record

__all__ = ["RepairPlan", "ReconcileReport", "RowDifference", "TableReport", "apply_repair", "as_dict", "canonical",
           "claimed", "plan_source_keys", "read_only", "reconcile", "record", "repair_plan"]
