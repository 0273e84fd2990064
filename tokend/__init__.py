"""tokend: one process keeps a Google access token fresh for every local program.

The package's face is the client API (stdlib only)::

    import tokend
    tokend.token()                      # the current access token, "default" profile
    openai.OpenAI(api_key=tokend.token, base_url=tokend.openai_base_url())
"""

__version__ = "0.1.0"

# After __version__: the client's imports never read it, but cli.py imports it from here.
from tokend.client import (
    TokenInfo,
    TokenUnavailable,
    openai_base_url,
    token,
    token_async,
    token_info,
    token_info_async,
)

__all__ = [
    "TokenInfo",
    "TokenUnavailable",
    "__version__",
    "openai_base_url",
    "token",
    "token_async",
    "token_info",
    "token_info_async",
]
