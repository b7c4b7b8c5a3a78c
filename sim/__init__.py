"""rumor: sim package.

Its event loop (sim.network) runs compiled (mypyc) when a current build
exists and RUMOR_PURE is unset; see compiled_build.py.
"""

from compiled_build import use_compiled

__path__ = use_compiled(__name__, __path__)
