"""The LLM engine (issue #15): a paged, prefix-caching, continuously batching
Llama engine. docs/LLM_ENGINE.md describes it.

Only torch-free names are re-exported here, so `import inference.llm` (a
router hashing prefixes, the API process) never loads torch; the engine core
is `inference.llm.core.EngineCore`.
"""

from .client import KVEvents as KVEvents
from .client import LLMClient as LLMClient
from .client import open_in_process as open_in_process
from .host import EngineStartError as EngineStartError
from .host import open_process_engine as open_process_engine
from .params import EngineStats as EngineStats
from .params import ModelInfo as ModelInfo
from .params import RequestOutput as RequestOutput
from .params import SamplingParams as SamplingParams
from .params import Usage as Usage
from .prefix import HASH_NAME as HASH_NAME
from .prefix import block_hashes as block_hashes
from .tokenizer import LLMTokenizer as LLMTokenizer
