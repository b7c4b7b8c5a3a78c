"""Remote engines (issue #16): vLLM, SGLang or any OpenAI-compatible server
running beside the daemon, fronted as the node's engine. docs/ENGINES.md.

    async with open_remote_engine(config, probe_interval=0.2) as engine:
        engine.ready, engine.health, engine.info
        resp = await engine.send("/v1/chat/completions", body)
        async for chunk in resp.aiter_bytes(): ...
        await engine.stats(), await engine.kv_events_since(cursor)
"""

from .engine import PROXY_PATHS as PROXY_PATHS
from .engine import EngineHealth as EngineHealth
from .engine import RemoteEngine as RemoteEngine
from .engine import RemoteEngineInfo as RemoteEngineInfo
from .engine import open_remote_engine as open_remote_engine
from .http import EngineResponse as EngineResponse
from .http import EngineStreamError as EngineStreamError
from .http import EngineUnavailable as EngineUnavailable
from .kv_wire import KVEventDecodeError as KVEventDecodeError
from .kv_wire import decode_event_batch as decode_event_batch
from .prefix_state import RemotePrefixState as RemotePrefixState
