"""setuptools entry point; the package metadata is in pyproject.toml.

`python setup.py build_mypyc` (what `make compiled` runs) compiles the
protocol's hot path with mypyc instead: compiled_build.py says what, where
to, and how the packages pick it up.
"""

import sys

from setuptools import setup

if __name__ == "__main__" and sys.argv[1:2] == ["build_mypyc"]:
    import compiled_build

    sys.exit(compiled_build.build())

setup()
