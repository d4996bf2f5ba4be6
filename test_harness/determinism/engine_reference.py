"""The engine called directly, in the test process: the reference a step must equal.

:class:`Reference` loads the same GGUF with the same explicit settings as a replica and
produces, for one request, the engine's token ids (``Llama.generate`` from an empty
cache, ids until end-of-generation or ``max_tokens``) and llama-cpp-python's own
``create_completion`` result. No orchestrator code is involved.
"""

from __future__ import annotations

import atexit
import pathlib
from typing import Any

import msgspec

from worker_adapters.llamacpp import llamacpp_settings
from worker_adapters.llamacpp_worker import open_llama

__all__ = ["Expected", "Reference", "decode_valid"]


class Expected(msgspec.Struct, frozen=True):
    """What the engine produces for one request.

    Attributes:
        ids: sampled token ids (end-of-generation excluded).
        data: their bytes, concatenated.
        text: ``create_completion``'s text.
        completion_tokens: ``create_completion``'s token count. It exceeds ``max_tokens``
            when the last token ends inside a character: llama-cpp-python then samples on
            until the character completes (an engine never does: ``max_tokens`` bounds
            sampling).
    """

    ids: list[int]
    data: bytes
    text: str
    completion_tokens: int


def decode_valid(data: bytes) -> str:
    """UTF-8 text of ``data`` with an incomplete trailing character left out, invalid
    bytes as U+FFFD: what the ``t`` of a stream's token frames concatenate to."""
    import codecs

    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=False)


class Reference:
    """One ``llama_cpp.Llama`` with a replica's default settings."""

    def __init__(self, model_path: pathlib.Path) -> None:
        import llama_cpp
        from llama_cpp import _utils

        def close_null_files() -> None:  # llama_cpp opens them at import and never closes
            for name in ("outnull_file", "errnull_file"):
                handle = getattr(_utils, name, None)
                if handle is not None:
                    handle.close()

        atexit.register(close_null_files)

        self.llm = open_llama(str(model_path), llamacpp_settings({}, 2048))
        self.lib = llama_cpp

    def complete(self, prompt: str, params: dict[str, Any]) -> Expected:
        """The engine's tokens and its own completion for a raw prompt."""
        llm = self.llm
        sampling = {"top_k": params["top_k"], "top_p": params["top_p"],
                    "min_p": params["min_p"], "repeat_penalty": params["repeat_penalty"]}
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        llm.reset()
        llm.set_seed(params["seed"])
        ids: list[int] = []
        gen = llm.generate(tokens, temp=params["temperature"], typical_p=1.0, **sampling)
        for token in gen:
            if self.lib.llama_vocab_is_eog(llm._model.vocab, token) or \
                    len(ids) >= params["max_tokens"]:
                break
            ids.append(token)
        gen.close()
        data = b"".join(llm.detokenize([t]) for t in ids)
        llm.reset()
        out = llm.create_completion(prompt, max_tokens=params["max_tokens"],
                                    temperature=params["temperature"], seed=params["seed"],
                                    stop=[], **sampling)
        choice = out["choices"][0]
        usage = out["usage"]
        return Expected(ids=ids, data=data, text=choice["text"],
                        completion_tokens=usage["completion_tokens"])
