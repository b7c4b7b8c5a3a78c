"""Delta-state CRDTs and their wire codec.

Every type is a join-semilattice: `merge` is commutative, associative and
idempotent, mutators return deltas that join like full states, and
`to_wire`/`from_wire` give canonical msgpack-ready primitives.

Its hot-path modules run compiled (mypyc) when a current build exists and
RUMOR_PURE is unset; see compiled_build.py.
"""

from compiled_build import use_compiled

__path__ = use_compiled(__name__, __path__)

from ._wire import expect_plain
from .base import CRDT as CRDT
from .causal import CausalContext as CausalContext
from .causal import ContextDigest as ContextDigest
from .causal import ORMap as ORMap
from .causal import ORSet as ORSet
from .codec import TYPES as TYPES
from .codec import WIRE_VERSION as WIRE_VERSION
from .codec import decode as decode
from .codec import encode as encode
from .codec import unpack_limited as unpack_limited
from .counters import GCounter as GCounter
from .counters import PNCounter as PNCounter
from .errors import ClockDriftError as ClockDriftError
from .errors import DecodeError as DecodeError
from .hlc import HLC as HLC
from .hlc import hlc_logical as hlc_logical
from .hlc import hlc_pack as hlc_pack
from .hlc import hlc_wall_ms as hlc_wall_ms
from .registers import LWWMap as LWWMap
from .registers import LWWRegister as LWWRegister

# Validates untrusted plain data (msgpack-native, bounded nesting); raises DecodeError.
validate_plain = expect_plain
__all__ = [name for name in dir() if not name.startswith("_")]
