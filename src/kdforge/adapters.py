"""Model adapters: turn a batch dict into a StudentOutput (logits, features, hidden states + head) and generate.

Classifiers, Hugging Face encoders and causal LMs all run through one Distiller and one Trainer because the
difference between ``model(x)`` and ``model(input_ids=..., attention_mask=...)`` lives here, in one registered class
per calling convention.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from kdforge.batch import extract_logits
from kdforge.capture import Recorder
from kdforge.errors import ConfigError
from kdforge.models.hf.attention import restore, use_eager
from kdforge.registry import ADAPTERS
from kdforge.signals import Needs, StudentOutput


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def token_mask(batch: dict[str, Any], per_token: bool, device: torch.device) -> Tensor | None:
    """The (B, S) real-token mask of a sequence batch (its attention_mask), None for one output per sample."""
    mask = batch.get("attention_mask")
    if mask is None or not per_token:
        return None
    return torch.as_tensor(mask).to(device).bool()


def hidden_only(needs: Needs) -> bool:
    """Whether only hidden states + head are wanted (chunked token losses), not the full logits."""
    return needs.student_hidden and not needs.student_logits


class ModelAdapter:
    """Base adapter: ``adapter(batch, needs)`` runs the model (or its DDP wrapper) and records asked-for features."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.runner: nn.Module = model  # the module actually called (a DDP wrapper while training)
        self._recorder: Recorder | None = None
        # Attention implementations replaced while attention weights are recorded (HF models, also inside kdforge's
        # wrappers such as tiny_bert): SDPA and flash attention never form the weights.
        self._eager: list[tuple[nn.Module, str]] = []

    @property
    def causal_lm(self) -> bool:
        """Whether the model is a causal LM exposing last hidden states and an output head (chunked token losses)."""
        return False

    @property
    def softcap(self) -> float | None:
        """Final-logit soft-capping the model applies after its head (Gemma 2), None when it applies none."""
        return None

    def record(self, paths: tuple[str, ...]) -> None:
        """Capture the outputs of these module paths on every call (checked now: a wrong path fails here)."""
        if self._recorder is not None and self._recorder.paths == paths:
            return
        self.release()
        self._recorder = Recorder(self.model, paths) if paths else None
        self._eager = use_eager(self.model, paths)

    def release(self) -> None:
        """Remove the hooks and restore the attention implementation; the model is left exactly as it was."""
        if self._recorder is not None:
            self._recorder.remove()
            self._recorder = None
        restore(self._eager)
        self._eager = []

    def call(self, batch: dict[str, Any], needs: Needs) -> Any:
        """The raw model output for ``batch`` (subclasses choose the calling convention)."""
        raise NotImplementedError

    def hidden(self, output: Any) -> tuple[Tensor | None, Any]:
        """(last hidden states, output head) from a model output, where the model exposes them."""
        return None, None

    def __call__(self, batch: dict[str, Any], needs: Needs = Needs()) -> StudentOutput:
        """Run the model on ``batch``; returns logits, recorded features, mask, and hidden + head when needed."""
        if self._recorder is not None:
            self._recorder.clear()
        output = self.call(batch, needs)
        logits = None if hidden_only(needs) else extract_logits(output)
        hidden, head = self.hidden(output) if needs.student_hidden else (None, None)
        features = dict(self._recorder.tensors) if self._recorder is not None else {}
        shaped = hidden if logits is None else logits
        per_token = shaped is not None and shaped.dim() == 3
        device = shaped.device if shaped is not None else torch.device("cpu")
        mask = token_mask(batch, per_token, device)
        return StudentOutput(logits, features, hidden=hidden, head=head, mask=mask)

    def generate(self, batch: dict[str, Any], max_new_tokens: int, do_sample: bool = False) -> Tensor:
        """Continue every sequence of ``batch['input']`` by up to ``max_new_tokens`` tokens."""
        raise ConfigError(f"{type(self.model).__name__} is not a generative model; it cannot generate text")


@ADAPTERS.register("module")
class ModuleAdapter(ModelAdapter):
    """``model(batch['input'])``; the attention mask is passed too when the model's forward takes one."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self._takes_mask = _accepts(model, "attention_mask")
        self._gives_hidden = _accepts(model, "return_hidden")

    @property
    def causal_lm(self) -> bool:
        """kdforge's own causal models: a forward with ``return_hidden`` and a linear ``head``."""
        return self._gives_hidden and isinstance(getattr(self.model, "head", None), nn.Linear)

    def call(self, batch: dict[str, Any], needs: Needs) -> Any:
        """``model(x)``, plus ``attention_mask=`` and ``return_hidden=True`` where the forward takes them."""
        kwargs: dict[str, Any] = {}
        if self._takes_mask and batch.get("attention_mask") is not None:
            kwargs["attention_mask"] = batch["attention_mask"]
        if needs.student_hidden:
            if not self._gives_hidden:
                raise ConfigError(
                    f"{type(self.model).__name__} cannot return hidden states (its forward takes no return_hidden); "
                    "objectives over hidden states need a causal LM"
                )
            kwargs["return_hidden"] = True
        return self.runner(batch["input"], **kwargs)

    def hidden(self, output: Any) -> tuple[Tensor | None, Any]:
        """``(logits, hidden)`` from a forward called with ``return_hidden=True``, and the model's ``head``."""
        states = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        return states, getattr(self.model, "head", None)

    def generate(self, batch: dict[str, Any], max_new_tokens: int, do_sample: bool = False) -> Tensor:
        """Greedy or sampled continuation for kdforge's own causal models (logits (B, S, V) per call)."""
        ids = batch["input"]
        limit = getattr(getattr(self.model, "positions", None), "num_embeddings", None)
        with torch.no_grad():
            for _ in range(max_new_tokens):
                if limit is not None and ids.shape[1] >= limit:
                    break
                logits = extract_logits(self.model(ids))
                if logits.dim() != 3:
                    return super().generate(batch, max_new_tokens, do_sample)
                last = logits[:, -1].float()
                nxt = torch.multinomial(last.softmax(-1), 1) if do_sample else last.argmax(-1, keepdim=True)
                ids = torch.cat([ids, nxt.to(ids.dtype)], dim=1)
        return ids


@ADAPTERS.register("hf")
class HFAdapter(ModelAdapter):
    """Hugging Face models: ``model(input_ids=..., attention_mask=...)``; hidden states and the LM head on request."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self._keeps_logits = _accepts(model, "logits_to_keep")

    @property
    def causal_lm(self) -> bool:
        """A transformers causal LM (``…ForCausalLM``) with an output embedding."""
        config = getattr(self.model, "config", None)
        if config is None or getattr(config, "is_encoder_decoder", False):
            return False
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        return isinstance(head, nn.Linear) and type(self.model).__name__.endswith("ForCausalLM")

    @property
    def softcap(self) -> float | None:
        """``config.final_logit_softcapping`` (Gemma 2 caps its logits with tanh), None when absent."""
        value = getattr(getattr(self.model, "config", None), "final_logit_softcapping", None)
        return float(value) if value else None

    def call(self, batch: dict[str, Any], needs: Needs) -> Any:
        """Keyword call with the batch's attention mask (never rebuilt from a pad id)."""
        kwargs: dict[str, Any] = {"input_ids": batch["input"]}
        if batch.get("attention_mask") is not None:
            kwargs["attention_mask"] = batch["attention_mask"]
        if needs.student_hidden:
            kwargs["output_hidden_states"] = True
            if hidden_only(needs) and self._keeps_logits:
                # The head runs on the last position only: the chunked losses make the other logits themselves.
                kwargs["logits_to_keep"] = 1
        return self.runner(**kwargs)

    def hidden(self, output: Any) -> tuple[Tensor | None, Any]:
        """The last hidden states and ``get_output_embeddings()``."""
        states = getattr(output, "hidden_states", None)
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        return (states[-1] if states else None), head

    def generate(self, batch: dict[str, Any], max_new_tokens: int, do_sample: bool = False) -> Tensor:
        """``model.generate`` with the KV cache."""
        if not hasattr(self.model, "generate"):
            return super().generate(batch, max_new_tokens, do_sample)
        mask = batch.get("attention_mask")
        with torch.no_grad():
            return self.model.generate(
                input_ids=batch["input"], attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=do_sample
            )


def adapter_for(model: nn.Module, kind: str | None = None) -> ModelAdapter:
    """The adapter named ``kind``, or the one that fits the model (Hugging Face models → 'hf', others → 'module')."""
    if kind is None:
        kind = "hf" if hasattr(model, "config") and hasattr(model, "get_input_embeddings") else "module"
    return ADAPTERS.get(kind)(model)
