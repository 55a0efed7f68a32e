"""GGUF export: a (merged) Hugging Face causal LM as one GGUF file that llama.cpp and Ollama load.

Written with the `gguf` package's writer and tensor-name map, the way llama.cpp's convert_hf_to_gguf.py
writes these families: Llama and Mistral as llama.cpp's `llama` architecture (query/key rows permuted to
GGML's rotary layout), Qwen2 as `qwen2`; byte-level BPE tokenizers (SmolLM, Llama 3, Qwen2: `gpt2` in GGUF
terms) with their vocabulary, merges and special tokens. Weights in f16 or q8_0 (norms and biases f32).

Run as: tunelab export runs/quickstart out/quickstart-gguf --format gguf --quant q8_0
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tunelab.errors import UserError

QUANTS = ("f16", "q8_0")
ARCHES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}  # HF model_type -> llama.cpp architecture
# tokenizer.ggml.pre: llama.cpp picks the pre-tokenizer by this name (it hashes a test text to find it when
# converting); the families tunelab knows by Hub id prefix, else "default" (llama.cpp's GPT-2 split)
PRE_TOKENIZERS = {"HuggingFaceTB/SmolLM": "smollm", "Qwen/Qwen2": "qwen2", "meta-llama/Meta-Llama-3": "llama-bpe",
                  "meta-llama/Llama-3": "llama-bpe"}


def write_gguf(model, tok, path: Path, quant: str = "f16", name: str = "model", hub_id: str | None = None) -> Path:
    """Write `model` (an HF causal LM, merged) and `tok` (its fast tokenizer) to `path`.

    Raises:
        UserError: an architecture or tokenizer outside the supported families, or an unknown quant type.
    """
    import gguf
    config = model.config
    arch = ARCHES.get(config.model_type)
    if arch is None:
        raise UserError(f"--format gguf: {config.model_type} models are not supported (Llama, Mistral and Qwen2 "
                        f"are); export the merged model (tunelab export RUN OUT) and use llama.cpp's "
                        f"convert_hf_to_gguf.py")
    if quant not in QUANTS:
        raise UserError(f"--quant: {quant!r}; choose one of {', '.join(QUANTS)}")
    vocab = _vocab(tok, config.vocab_size)
    writer = gguf.GGUFWriter(str(path), arch)
    _metadata(writer, config, arch, quant, name)
    _tokenizer(writer, tok, vocab, hub_id)
    qtype = gguf.GGMLQuantizationType.Q8_0 if quant == "q8_0" else gguf.GGMLQuantizationType.F16
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.QWEN2,
                                     config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads the output projection from token_embd when there is no output.weight
        target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise UserError(f"--format gguf: no GGUF name for tensor {hf_name}")
        data = tensor.detach().float().cpu().numpy()
        if arch == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in hf_name else config.num_key_value_heads
            data = _permute(data, heads)
        if data.ndim == 1:
            writer.add_tensor(target, data.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32 == 0:
            writer.add_tensor(target, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(target, data.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _metadata(writer, config, arch: str, quant: str, name: str) -> None:
    import gguf
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    rope = getattr(text, "rope_parameters", None) or {}
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(text.max_position_embeddings)
    writer.add_embedding_length(text.hidden_size)
    writer.add_block_count(text.num_hidden_layers)
    writer.add_feed_forward_length(text.intermediate_size)
    writer.add_head_count(text.num_attention_heads)
    writer.add_head_count_kv(text.num_key_value_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(text, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(text.rms_norm_eps)
    writer.add_vocab_size(text.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    if quant == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _vocab(tok, vocab_size: int) -> dict:
    """tokens (by id, padded to the model's vocabulary), token types and merges of a byte-level BPE tokenizer."""
    import gguf
    spec = json.loads(tok.backend_tokenizer.to_str()) if hasattr(tok, "backend_tokenizer") else None
    model = (spec or {}).get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UserError("--format gguf: only byte-level BPE tokenizers (SmolLM, Llama 3, Qwen2) are exported; this "
                        "one is SentencePiece-style: export the merged model (tunelab export RUN OUT) and use "
                        "llama.cpp's convert_hf_to_gguf.py")
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        types.append(gguf.TokenType.CONTROL if added.get(i, {}).get("special") else
                     gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges}


def _tokenizer(writer, tok, vocab: dict, hub_id: str | None) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(next((v for k, v in PRE_TOKENIZERS.items() if (hub_id or "").startswith(k)), "default"))
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    for key, value in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id), ("unk", tok.unk_token_id),
                       ("pad", tok.pad_token_id)):
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(value)
    writer.add_add_bos_token(bool(getattr(tok, "add_bos_token", False)))
    writer.add_add_space_prefix(False)
    if getattr(tok, "chat_template", None):
        writer.add_chat_template(tok.chat_template)


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotary layout (halves) -> GGML's (interleaved pairs), per head: what llama.cpp's converter does."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def modelfile(gguf_name: str, template_hint: str, chat: bool = False) -> str:
    """An Ollama Modelfile for the exported file (a chat-trained model is prompted through the GGUF's chat template,
    which Ollama applies)."""
    turn = " as the user turn of the chat template" if chat else ""
    return f"FROM ./{gguf_name}\n# the training prompt was: {template_hint!r}{turn}\nPARAMETER temperature 0\n"
