"""`benchmarks/legacy_parser.py` (the scoring path before uint8 records and the wire-format reader), as a
module the tests can import: the reference the new reader and the re-export are checked against."""

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "legacy_parser.py"
_spec = importlib.util.spec_from_file_location("legacy_parser", _PATH)
legacy_parser = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(legacy_parser)
