"""Text <-> token ids behind one small interface: a character toy, bytes for random-weight shapes, and transformers' tokenizers."""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Sequence
from typing import Any


class Codec:
    """Text <-> token ids. `piece` gives a token's text in its context (byte-level BPE tokens can be partial characters)."""

    eos_ids: frozenset[int] = frozenset()
    chat: bool = False

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def vocab_key(self) -> str:
        """A fingerprint of the vocabulary: two codecs with the same key tokenize alike."""
        raise NotImplementedError

    def piece(self, prev: Sequence[int], tok: int) -> str:
        tail = list(prev[-4:])
        before = self.decode(tail)
        both = self.decode(tail + [tok])
        return both[len(before) :] if both.startswith(before) else self.decode([tok])


class CharCodec(Codec):
    """A toy tokenizer for tiny random models: one token per printable ASCII character, newline or tab, then <eos>."""

    def __init__(self) -> None:
        self.chars = string.printable[:95] + "\n\t"
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.eos = len(self.chars)
        self.eos_ids = frozenset({self.eos})
        self.vocab_size = len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        return [self.index.get(c, self.index["?"]) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] if i < len(self.chars) else "" for i in ids)

    def piece(self, prev: Sequence[int], tok: int) -> str:
        return self.decode([tok])

    def vocab_key(self) -> str:
        return "chars:" + self.chars


class ByteCodec(Codec):
    """For random-weight models of a real model's shapes (GPU timing): text as UTF-8 bytes, ids 0-255; the other ids
    of the vocabulary decode as a middle dot. Their text is gibberish: only their cost is real."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) if 32 <= i < 127 or i in (9, 10) else "\u00b7" for i in ids)

    def piece(self, prev: Sequence[int], tok: int) -> str:
        return self.decode([tok])

    def vocab_key(self) -> str:
        return f"bytes:{self.vocab_size}"


class HFCodec(Codec):
    """A transformers tokenizer; the chat template is applied for instruct models."""

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int], chat: bool) -> None:
        self.tok = tokenizer
        self.eos_ids = frozenset(i for i in eos_ids if i is not None)
        self.chat = chat and bool(getattr(tokenizer, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        if self.chat:
            text = self.tok.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def vocab_key(self) -> str:
        vocab = sorted(self.tok.get_vocab().items(), key=lambda kv: kv[1])
        return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()
