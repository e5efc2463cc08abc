"""The input contract: any lane's raw values → validated model inputs, with one set of rules.

- values.py: the rules for values (datatypes, booleans, NaN, ranges, strings, BYTES) and the
  one error format (docs/inputs.md has the table);
- signature.py: names, datatypes, shapes and limits against the model's signature;
- rows.py, records.py, columns.py: row sources (JSON records such as stream events and JSONL
  lines; Arrow columns from Parquet and CSV) with one verdict per row.

The V2 and V1 wire formats (core/codec.py) decode tensors with values.py too. columns.py needs
pyarrow (the batch extra) and is imported by its users only.
"""

from inferlane.core.inputs.records import RecordDecoder
from inferlane.core.inputs.rows import Decoded, FieldMap
from inferlane.core.inputs.signature import Signature
from inferlane.core.inputs.values import InvalidValue, ValueProblem, from_buffer, from_json, from_typed, invalid

__all__ = ["Decoded", "FieldMap", "InvalidValue", "RecordDecoder", "Signature", "ValueProblem", "from_buffer",
           "from_json", "from_typed", "invalid"]
