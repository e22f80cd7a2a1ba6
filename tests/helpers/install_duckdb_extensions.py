"""Copies the pip-installed DuckDB extensions to where DuckDB looks for them.

The BigQuery emulator used by the tests (bqemulator, DuckDB-backed) loads the `spatial` and
`avro` extensions at start-up; DuckDB would otherwise try to download them, which fails offline.
`make test` runs this once after installing the test extra.
"""

from __future__ import annotations

import platform
import shutil
import sys
from pathlib import Path


def main() -> int:
    try:
        import duckdb
    except ImportError:
        print("duckdb is not installed; nothing to do")
        return 0
    version = f"v{duckdb.__version__}"
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "amd64")
    target = Path.home() / ".duckdb" / "extensions" / version / f"{platform.system().lower()}_{machine}"
    target.mkdir(parents=True, exist_ok=True)
    site = Path(duckdb.__file__).resolve().parent.parent
    found = sorted(site.glob(f"duckdb_extension_*/extensions/{version}/*.duckdb_extension"))
    for extension in found:
        shutil.copy2(extension, target / extension.name)
    print(f"DuckDB extensions in {target}: {', '.join(p.name for p in found) or 'none found'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
