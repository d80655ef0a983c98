"""Fuzz target: the server configuration file.

Input: the bytes of ``spa.toml``. ``config.load`` must return a Config or
raise ConfigError naming the file (and a line whenever the file parses);
any other exception is a crash. The corpus starts from what ``spa init``
writes, so mutations stay close to real files.

Run: python tests/fuzz/fuzz_config.py [libFuzzer options] [corpus dirs]  (docs/fuzzing.md)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["spa"]):
    from spa import config
    from spa.errors import ConfigError

# One small directory per process in $TMPDIR (test_fuzz.py points TMPDIR at
# pytest's own temporary directory); libFuzzer exits without Python's clean-up.
PATH = Path(tempfile.mkdtemp(prefix="spa-fuzz-config-")) / "spa.toml"


def test_one_input(data: bytes) -> None:
    PATH.write_bytes(data)
    try:
        config.load(PATH)
    except ConfigError as error:
        assert error.path == str(PATH), error


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
