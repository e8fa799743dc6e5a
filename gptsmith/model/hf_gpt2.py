"""Hugging Face GPT-2 checkpoints: import into ``GPTModel`` and export back.

How the two layouts map (``i`` is the block index)::

    transformer.wte.weight              tok_emb.weight
    transformer.wpe.weight              pos_emb.weight
    transformer.h.i.ln_1.{weight,bias}  trf_blocks.i.norm1.{scale,shift}
    transformer.h.i.attn.c_attn.*       trf_blocks.i.att.qkv.*        (Conv1D weight: transposed)
    transformer.h.i.attn.c_proj.*       trf_blocks.i.att.out_proj.*   (transposed)
    transformer.h.i.ln_2.{weight,bias}  trf_blocks.i.norm2.{scale,shift}
    transformer.h.i.mlp.c_fc.*          trf_blocks.i.ff.layers.0.*    (transposed)
    transformer.h.i.mlp.c_proj.*        trf_blocks.i.ff.layers.2.*    (transposed)
    transformer.ln_f.{weight,bias}      final_norm.{scale,shift}
    lm_head.weight                      out_head.weight               (absent when tied)

GPT-2's ``Conv1D`` stores weights as (in, out), the transpose of ``nn.Linear``'s (out, in).
``c_attn`` already holds [queries | keys | values] with heads laid out as our fused ``qkv``
expects, so a transpose is all it needs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from gptsmith.data.download import is_offline
from gptsmith.errors import CheckpointError
from gptsmith.model.gpt import GPTConfig, GPTModel
from gptsmith.model.hf_files import (
    HF_PYTORCH_BIN,
    HF_PYTORCH_INDEX,
    HF_SAFETENSORS,
    HF_SAFETENSORS_INDEX,
    read_hf_state,
    safetensors_shards,
)
from gptsmith.model.weights import (
    build_model,
    check_state_shapes,
    safetensors_shapes,
)
from gptsmith.storage import (
    as_path,
    atomic_save_safetensors,
    atomic_write_json,
    created_directory,
    write_errors,
)

TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")

# Our names (with {i} for the block) -> HF names, and whether the weight is Conv1D (transposed).
_BLOCK_MAP = {
    "norm1.scale": ("ln_1.weight", False),
    "norm1.shift": ("ln_1.bias", False),
    "att.qkv.weight": ("attn.c_attn.weight", True),
    "att.qkv.bias": ("attn.c_attn.bias", False),
    "att.out_proj.weight": ("attn.c_proj.weight", True),
    "att.out_proj.bias": ("attn.c_proj.bias", False),
    "norm2.scale": ("ln_2.weight", False),
    "norm2.shift": ("ln_2.bias", False),
    "ff.layers.0.weight": ("mlp.c_fc.weight", True),
    "ff.layers.0.bias": ("mlp.c_fc.bias", False),
    "ff.layers.2.weight": ("mlp.c_proj.weight", True),
    "ff.layers.2.bias": ("mlp.c_proj.bias", False),
}
_TOP_MAP = {
    "tok_emb.weight": "wte.weight",
    "pos_emb.weight": "wpe.weight",
    "final_norm.scale": "ln_f.weight",
    "final_norm.shift": "ln_f.bias",
}
# Buffers that old GPT-2 files carry (the causal mask), not weights.
_IGNORED = re.compile(r"(^|\.)attn\.(bias|masked_bias)$")


# GPT2Config's size fields, their defaults, and the GPTConfig fields they become.
_HF_SIZES = {"vocab_size": (50257, "vocab_size"), "n_positions": (1024, "context_length"),
             "n_embd": (768, "emb_dim"), "n_head": (12, "n_heads"), "n_layer": (12, "n_layers")}


def gpt_config_from_hf(hf_config: dict, *, source: str = "config.json") -> GPTConfig:
    """Translate a Hugging Face ``GPT2Config`` dict; refuse variants our architecture cannot run,
    and fields of the wrong type, naming the field as the file spells it."""
    sizes = {}
    for field, (default, ours) in _HF_SIZES.items():
        value = hf_config.get(field, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{source}: {field} must be a positive whole number, got {value!r}")
        sizes[ours] = value
    emb_dim, n_heads = sizes["emb_dim"], sizes["n_heads"]
    if emb_dim % n_heads:
        raise CheckpointError(f"{source}: n_embd {emb_dim} is not divisible by n_head {n_heads}")
    n_inner = hf_config.get("n_inner")
    if n_inner is not None and (isinstance(n_inner, bool) or not isinstance(n_inner, int)):
        raise CheckpointError(f"{source}: n_inner must be a whole number or null, got {n_inner!r}")
    if n_inner is not None and n_inner != 4 * emb_dim:
        raise CheckpointError(
            f"{source}: n_inner={n_inner} is not 4 * n_embd ({4 * emb_dim}); "
            "gptsmith's feed-forward is 4x wide"
        )
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in TANH_GELUS:
        raise CheckpointError(
            f"{source}: activation_function {activation!r} is not supported (gptsmith uses GPT-2's "
            f"tanh GELU: {', '.join(TANH_GELUS)})"
        )
    for field in ("layer_norm_epsilon", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        value = hf_config.get(field, 1e-5 if field == "layer_norm_epsilon" else None)
        if value is None and field != "layer_norm_epsilon":
            continue  # a dropout rate may be null (the default then)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CheckpointError(f"{source}: {field} must be a number, got {value!r}")
    # GPT-2 has three dropout rates (embeddings, attention, residual); gptsmith has one,
    # and GPT-2's files give all three the same value. The residual one is taken.
    drop_rate = float(0.1 if hf_config.get("resid_pdrop") is None else hf_config["resid_pdrop"])
    if not 0.0 <= drop_rate < 1.0:
        raise CheckpointError(f"{source}: resid_pdrop must be in [0, 1), got {drop_rate!r}")
    tie = hf_config.get("tie_word_embeddings", True)
    if not isinstance(tie, bool):
        raise CheckpointError(f"{source}: tie_word_embeddings must be true or false, got {tie!r}")
    eps = hf_config.get("layer_norm_epsilon", 1e-5)
    if abs(eps - 1e-5) > 1e-12:
        raise CheckpointError(f"{source}: layer_norm_epsilon {eps} is not supported (gptsmith uses 1e-5)")
    for flag, wanted in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ):
        value = hf_config.get(flag, wanted)
        if not isinstance(value, bool):  # (transformers would take any non-empty string as true)
            raise CheckpointError(f"{source}: {flag} must be true or false, got {value!r}")
        if value != wanted:
            raise CheckpointError(f"{source}: {flag}={str(value).lower()} is not supported by gptsmith")
    return GPTConfig(**sizes, drop_rate=drop_rate, qkv_bias=True, tie_weights=tie)


def hf_config_from_gpt(cfg: GPTConfig) -> dict:
    """A Hugging Face ``GPT2Config`` dict for ``cfg`` (what ``GPT2LMHeadModel.from_pretrained`` reads)."""
    eos = min(50256, cfg.vocab_size - 1)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_ctx": cfg.context_length,
        "n_embd": cfg.emb_dim,
        "n_head": cfg.n_heads,
        "n_layer": cfg.n_layers,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": cfg.tie_weights,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], cfg: GPTConfig, *,
                       source: str = "Hugging Face checkpoint") -> dict[str, torch.Tensor]:
    """Rename and transpose a HF GPT-2 state dict into ``GPTModel``'s names and layouts
    (``source`` names the checkpoint in errors)."""
    # Files saved from GPT2Model lack the "transformer." prefix; GPT2LMHeadModel's have it.
    hf = {k.removeprefix("transformer."): v for k, v in hf_state.items() if not _IGNORED.search(k)}
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(hf_name: str, transpose: bool = False) -> torch.Tensor:
        if hf_name not in hf:
            raise CheckpointError(f"{source} has no tensor {hf_name!r} (is it a GPT-2 model?)")
        used.add(hf_name)
        tensor = hf[hf_name]
        return tensor.t().contiguous() if transpose else tensor

    for ours, theirs in _TOP_MAP.items():
        state[ours] = take(theirs)
    for i in range(cfg.n_layers):
        for ours, (theirs, transpose) in _BLOCK_MAP.items():
            state[f"trf_blocks.{i}.{ours}"] = take(f"h.{i}.{theirs}", transpose)
    if "lm_head.weight" in hf:
        used.add("lm_head.weight")
        head = hf["lm_head.weight"]
        if not cfg.tie_weights:
            state["out_head.weight"] = head
        elif head.data_ptr() != state["tok_emb.weight"].data_ptr() and not torch.equal(
            head, state["tok_emb.weight"]
        ):
            raise CheckpointError(
                f"{source} says tie_word_embeddings=true but lm_head.weight differs from "
                "wte.weight (set tie_word_embeddings to false in its config.json)"
            )
    elif not cfg.tie_weights:
        raise CheckpointError(f"{source} has tie_word_embeddings=false but no lm_head.weight")
    extra = sorted(set(hf) - used)
    if extra:
        blocks = [name for name in extra if re.match(r"h\.\d+\.", name)]
        # more blocks than n_layer says, or the head of another task (GPT2ForSequenceClassification's
        # score.weight, ...), which a language model has no place for
        why = ("n_layer in config.json may be wrong" if blocks else
               "not a GPT-2 language model's: gptsmith imports GPT2LMHeadModel and GPT2Model weights, "
               "not a task head")
        shown = (blocks or extra)[:3]
        raise CheckpointError(
            f"{source} has {len(extra)} tensor(s) gptsmith does not know, e.g. {', '.join(shown)} ({why})"
        )
    return state


def state_dict_to_hf(model: GPTModel) -> dict[str, torch.Tensor]:
    """``GPTModel``'s weights in HF GPT-2 names and Conv1D layout (lm_head only when untied)."""
    cfg = model.cfg
    ours = model.state_dict()
    hf: dict[str, torch.Tensor] = {}
    for name, theirs in _TOP_MAP.items():
        hf[f"transformer.{theirs}"] = ours[name]
    for i in range(cfg.n_layers):
        for name, (theirs, transpose) in _BLOCK_MAP.items():
            key = f"trf_blocks.{i}.{name}"
            if key not in ours:  # qkv_bias=False: GPT-2 always has the bias, zeros are equivalent
                qkv_weight = ours[f"trf_blocks.{i}.att.qkv.weight"]
                tensor = qkv_weight.new_zeros(3 * cfg.emb_dim)
            else:
                tensor = ours[key].t() if transpose else ours[key]
            hf[f"transformer.h.{i}.{theirs}"] = tensor.detach().contiguous()
    if not cfg.tie_weights:
        hf["lm_head.weight"] = ours["out_head.weight"]
    return hf


def check_hf_weights(model_dir: str | Path, cfg: GPTConfig) -> None:
    """Check a HF directory's tensor names and shapes against ``cfg`` without building the model.

    The names go through the same mapping as an import (on shape-only ``meta`` tensors), so a
    config.json that does not fit its weights is reported here exactly as a load would report it.
    """
    model_dir = Path(model_dir)
    if (model_dir / HF_SAFETENSORS).is_file():
        source, shapes = model_dir / HF_SAFETENSORS, safetensors_shapes(model_dir / HF_SAFETENSORS)
    elif shards := safetensors_shards(model_dir):  # (their headers, read once)
        source, shapes = model_dir / HF_SAFETENSORS_INDEX, {}
        for shard_shapes in shards.values():
            shapes.update(shard_shapes)
    else:
        source = model_dir / (HF_PYTORCH_BIN if (model_dir / HF_PYTORCH_BIN).is_file() else HF_PYTORCH_INDEX)
        shapes = {k: v.shape for k, v in read_hf_state(model_dir).items()}
    hf = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    ours = state_dict_from_hf(hf, cfg, source=str(model_dir))
    check_state_shapes(cfg, {name: tuple(t.shape) for name, t in ours.items()}, source=str(source))


def load_hf_model_dir(
    model_dir: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> GPTModel:
    """Load a Hugging Face GPT-2 directory as a ``GPTModel`` (eval mode)."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    cfg = gpt_config_from_hf(hf_config, source=str(config_path))
    state = state_dict_from_hf(read_hf_state(model_dir), cfg, source=str(model_dir))
    return build_model(cfg, state, source=str(model_dir), device=device, dtype=dtype)


def export_hf(model: GPTModel, directory: str | Path) -> Path:
    """Write ``model`` as a HF GPT-2 directory that ``GPT2LMHeadModel.from_pretrained`` loads.

    Tied models store ``wte`` once and say ``tie_word_embeddings: true``; transformers re-ties
    ``lm_head`` on load.
    """
    directory = as_path(directory, "export_hf's directory")
    config = hf_config_from_gpt(model.cfg)
    config["torch_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    # As in save_model: a failed write is one line and removes the directory if this call made it.
    with created_directory(directory), write_errors(directory, "save it again"):
        weights = state_dict_to_hf(model)
        atomic_save_safetensors(weights, directory / HF_SAFETENSORS, metadata={"format": "pt"})
        atomic_write_json(directory / "config.json", config)
    return directory


def download_hf_model(name: str) -> Path:
    """Local directory of hub model ``name`` (e.g. ``gpt2``), from the HF cache or downloaded into it.

    Only config.json and one weights file are fetched: ``model.safetensors``, or for repositories
    that have none, ``pytorch_model.bin``. A cached snapshot without weights (an interrupted
    download) is completed online rather than used.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{name!r} is not a local path; downloading it needs huggingface_hub "
            "(pip install 'gptsmith[hub]')"
        ) from None

    def complete(directory: str | Path) -> Path | None:
        directory = Path(directory)
        has_weights = (directory / HF_SAFETENSORS).is_file() or (directory / HF_PYTORCH_BIN).is_file()
        return directory if (directory / "config.json").is_file() and has_weights else None

    for weights in (HF_SAFETENSORS, HF_PYTORCH_BIN):
        try:
            found = complete(snapshot_download(repo_id=name, allow_patterns=["config.json", weights],
                                               local_files_only=True))
            if found:
                return found
        except Exception:
            pass  # not cached (or only partly)
    if is_offline():  # (GPTSMITH_OFFLINE: no network attempt at all, not a DNS failure to report)
        raise CheckpointError(f"{name!r} is not a local directory nor in the Hugging Face cache, and "
                              "GPTSMITH_OFFLINE=1 forbids fetching it from the hub (check the path, or "
                              "unset GPTSMITH_OFFLINE)")
    error = None
    for weights in (HF_SAFETENSORS, HF_PYTORCH_BIN):
        try:
            found = complete(snapshot_download(repo_id=name, allow_patterns=["config.json", weights]))
            if found:
                return found
        except Exception as exc:
            error = error or exc
    reason = f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}" if error \
        else "the repository has no model.safetensors or pytorch_model.bin"
    raise CheckpointError(
        f"cannot get {name!r} from the Hugging Face hub ({reason}); "
        "check the name and your network, or pass a local directory"
    ) from None
