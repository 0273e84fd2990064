"""tokend: one process keeps a Google access token fresh for every local program.

The package's face is the client API (stdlib only)::

    import tokend
    tokend.token()                      # the current access token, "default" profile
    openai.OpenAI(api_key=tokend.token, base_url=tokend.openai_base_url())
"""

__version__ = "0.1.0"

# The client API is imported on first use (PEP 562), not with the package: `tokend token`
# and `tokend env` import tokend.cli, and on their quick path never need tokend.client.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from tokend.client import (
        TokenInfo,
        TokenUnavailable,
        openai_base_url,
        token,
        token_async,
        token_info,
        token_info_async,
    )
else:

    def __getattr__(name: str) -> object:
        if name == "client" or (name in __all__ and name != "__version__"):
            from importlib import import_module

            client = import_module("tokend.client")  # sets tokend.client as it loads
            value = client if name == "client" else getattr(client, name)
            globals()[name] = value
            return value
        raise AttributeError(f"module 'tokend' has no attribute {name!r}")


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
