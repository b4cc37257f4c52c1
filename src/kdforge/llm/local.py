"""The ``local`` teacher: a Hugging Face causal LM in this process (a transformers folder, or a GGUF file dequantised).

``score`` runs each prompt once and scores every continuation on top of its key/value cache, so C labels cost one
prompt pass plus one short batched pass over the labels, not C full passes. Tokens at the prompt/continuation boundary
are cut the way a server that tokenizes ``prompt + continuation`` as one string would cut them.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import pickle
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdforge.errors import ConfigError
from kdforge.llm.backend import Completion, GenParams, Usage
from kdforge.llm.cache import RequestCache, request_key

WHERE = "local teacher"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TOP_LOGPROBS = 5  # first-token alternatives reported with each completion


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _locate(model: str, gguf_file: str | None) -> tuple[Path, str | None]:
    """(folder, GGUF file name or None); ``model`` may also be the .gguf file itself."""
    path = Path(model).expanduser()
    if gguf_file is None and path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"{WHERE}: model {str(path)!r} does not exist; expected a .gguf file or a model folder")
        return path.parent, path.name
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is a file"
        raise ConfigError(f"{WHERE}: model {str(path)!r} {what}; expected a local transformers folder")
    if gguf_file is not None:
        if Path(gguf_file).name != gguf_file:
            raise ConfigError(f"{WHERE}: gguf_file {gguf_file!r} must be a file name inside {str(path)!r}, not a path")
        if not (path / gguf_file).is_file():
            raise ConfigError(f"{WHERE}: {str(path / gguf_file)!r} does not exist; expected a .gguf file in the folder")
        return path, gguf_file
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{WHERE}: model {str(path)!r} has no config.json; expected a transformers causal LM folder "
            "(config.json + weights + tokenizer), or a folder holding gguf_file"
        )
    return path, None


def _load(folder: Path, gguf_file: str | None, dtype: torch.dtype) -> tuple[Any, Any]:
    """(tokenizer, model) in eval mode; every load failure becomes a one-line ConfigError naming the path."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ConfigError(f"{WHERE} needs `pip install transformers` (kdforge[text])") from None
    from kdforge.models.hf.gguf import unsupported
    from kdforge.models.hf.load import OFFLINE, custom_code, float32, pickled_code

    where = str(folder / gguf_file) if gguf_file else str(folder)
    kwargs = dict(OFFLINE, **({"gguf_file": gguf_file} if gguf_file else {}))
    # Asked at load time (float32()'s key names the dtype argument): a GGUF model refuses a later .to(dtype).
    dtype_arg = {key: dtype for key in float32()}
    try:
        config = AutoConfig.from_pretrained(str(folder), **kwargs)
        _require_causal(config, where)
        model = AutoModelForCausalLM.from_pretrained(str(folder), config=config, **kwargs, **dtype_arg)
        tokenizer = _tokenizer(AutoTokenizer, folder, kwargs)
    except ConfigError:
        raise
    except pickle.UnpicklingError:  # transformers reads .bin weights with weights_only=True: code is refused
        raise pickled_code(folder, WHERE) from None
    except ValueError as err:
        if gguf_file is not None and "not supported" in str(err):
            raise unsupported(folder / gguf_file, err) from None
        refused = custom_code(err, folder, WHERE)
        if refused is not None:
            raise refused from None
        if "Unrecognized configuration class" in str(err):
            raise ConfigError(f"{WHERE}: {where!r} is not a causal LM ({_one_line(err)[:200]})") from None
        raise ConfigError(f"{WHERE}: cannot load {where!r}: {_one_line(err)}") from None
    except (OSError, KeyError, TypeError, RuntimeError) as err:
        raise ConfigError(f"{WHERE}: cannot load {where!r}: {_one_line(err)}") from None
    model.eval()
    model.requires_grad_(False)
    return tokenizer, model


def _require_causal(config: Any, where: str) -> None:
    """Refuse a bidirectional encoder: transformers would load BERT as a causal LM, scoring with attention to the
    future (its LM head is causal only with is_decoder=True)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", "")
    encoder = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_encoder_decoder", False)
    if encoder and not getattr(config, "is_decoder", False):
        raise ConfigError(
            f"{WHERE}: {where!r} holds a {model_type!r} encoder, not a causal LM; "
            "expected a decoder-only model (llama, qwen2, gpt2, ...)"
        )


def _tokenizer(auto: Any, folder: Path, kwargs: dict[str, Any]) -> Any:
    """The GGUF file's own tokenizer, else the folder's tokenizer files (a GGUF written without tokenizer metadata)."""
    try:
        return auto.from_pretrained(str(folder), **kwargs)
    except (ValueError, OSError, KeyError, TypeError):
        if "gguf_file" not in kwargs:
            raise
        return auto.from_pretrained(str(folder), **{k: v for k, v in kwargs.items() if k != "gguf_file"})


def _special_prefix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text by default (BOS; [CLS] for WordPiece), never after it."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


class LocalBackend:
    """A causal LM in process as a teacher: summed continuation log-probabilities and sampled completions."""

    def __init__(
        self,
        model: str,
        gguf_file: str | None = None,
        *,
        cache: RequestCache | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
        threads: int | None = None,
        dtype: str = "float32",
        device: str = "cpu",
    ):
        if dtype not in _DTYPES:
            raise ConfigError(f"{WHERE}: dtype {dtype!r} is not one of {sorted(_DTYPES)}")
        if batch_size < 1:
            raise ConfigError(f"{WHERE}: batch_size must be >= 1, got {batch_size}")
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model thread pool
        folder, gguf = _locate(model, gguf_file)
        self.source = str(folder / gguf) if gguf else str(folder)  # where the tokenizer (and its template) came from
        self.tokenizer, self.model = _load(folder, gguf, _DTYPES[dtype])
        self.device = torch.device(device)
        self.model.to(self.device)
        self.cache = cache
        self.batch_size = batch_size
        config = self.model.config
        limit = max_length or getattr(config, "max_position_embeddings", None) or 1 << 30
        self.max_length = int(limit)
        self._prefix = _special_prefix(self.tokenizer)
        self._pad = self.tokenizer.pad_token_id
        if self._pad is None:
            self._pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        # transformers 5 renamed the forward argument past_key_values to cache.
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        # Only the prompt's last position predicts anything we score: skip the LM head on the others.
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        identity = {
            "path": str(folder.resolve()),
            "gguf": gguf,
            "name_or_path": getattr(config, "_name_or_path", ""),
            "architectures": getattr(config, "architectures", None),
            "dtype": dtype,
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.fingerprint = f"local:{(Path(gguf).stem if gguf else folder.name)}@{digest}"
        self.usage = Usage()

    # -- tokens ----------------------------------------------------------------------------------------------------

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _prompt_ids(self, plain: list[int]) -> list[int]:
        # A chat-templated prompt may already start with BOS; a server would not add a second one.
        if self._prefix and plain[: len(self._prefix)] == self._prefix:
            return list(plain)
        return self._prefix + list(plain)

    def _continuation_ids(
        self, prompt: str, plain: list[int], continuations: list[str], alone: list[list[int]]
    ) -> list[list[int]]:
        """Tokens of each continuation as cut from the joint tokenization of prompt + continuation (when it extends
        the prompt's own tokens), else ``alone``: the continuation tokenized by itself."""
        joint = self._encode([prompt + c for c in continuations])
        n = len(plain)
        return [j[n:] if len(j) > n and j[:n] == plain else a for j, a in zip(joint, alone, strict=True)]

    # -- score -----------------------------------------------------------------------------------------------------

    def _forward(self, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=True, **kwargs).logits

    def _score_one(self, prompt_ids: list[int], conts: list[list[int]]) -> np.ndarray:
        """Summed log-probabilities of ``conts`` after ``prompt_ids``, reusing the prompt's key/value cache."""
        from transformers import DynamicCache

        out = np.zeros(len(conts), dtype=np.float64)
        dev = self.device
        kv = DynamicCache(config=self.model.config)
        logits = self._forward(torch.tensor([prompt_ids], device=dev), **{self._cache_arg: kv}, **self._keep_last)
        first = torch.log_softmax(logits[0, -1].float(), dim=-1)  # predicts each continuation's first token
        for i, c in enumerate(conts):
            if c:
                out[i] = float(first[c[0]])
        # Continuations of one token are done; the others feed all but their last token on top of the prompt's cache.
        longer = [i for i, c in enumerate(conts) if len(c) > 1]
        n_prompt = len(prompt_ids)
        for start in range(0, len(longer), self.batch_size):
            rows = longer[start : start + self.batch_size]
            width = max(len(conts[i]) - 1 for i in rows)
            inputs = torch.full((len(rows), width), self._pad, dtype=torch.long)
            targets = torch.zeros((len(rows), width), dtype=torch.long)
            real = torch.zeros((len(rows), width), dtype=torch.bool)
            for r, i in enumerate(rows):
                c = conts[i]
                inputs[r, : len(c) - 1] = torch.tensor(c[:-1])
                targets[r, : len(c) - 1] = torch.tensor(c[1:])
                real[r, : len(c) - 1] = True
            mask = torch.cat([torch.ones((len(rows), n_prompt), dtype=torch.long), real.long()], dim=1)
            positions = torch.arange(n_prompt, n_prompt + width).unsqueeze(0).expand(len(rows), -1)
            rows_kv = copy.deepcopy(kv)  # each chunk extends its own copy; the prompt's stays as it was
            rows_kv.batch_repeat_interleave(len(rows))
            logits = self._forward(
                inputs.to(dev),
                attention_mask=mask.to(dev),
                position_ids=positions.to(dev),
                **{self._cache_arg: rows_kv},
            ).float()
            picked = logits.gather(-1, targets.to(dev).unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
            sums = (picked * real.to(dev)).sum(dim=1).double().cpu().numpy()
            for r, i in enumerate(rows):
                out[i] += sums[r]
        return out

    def score(self, prompts: list[str], continuations: list[str]) -> np.ndarray:
        """[P, C] summed log-probability of each continuation's tokens after each prompt; NaN where the prompt plus
        the longest continuation does not fit the model's context."""
        result = np.full((len(prompts), len(continuations)), np.nan, dtype=np.float64)
        keys = [
            request_key({"backend": self.fingerprint, "op": "score", "prompt": p, "continuations": list(continuations)})
            for p in prompts
        ]
        stored = self.cache.get_many(keys) if self.cache is not None else {}
        alone = self._encode(list(continuations))
        for row, (prompt, key) in enumerate(zip(prompts, keys, strict=True)):
            if key in stored:
                result[row] = stored[key]
                self.usage.cached += 1
                continue
            plain = self._encode([prompt])[0]
            prompt_ids = self._prompt_ids(plain)
            conts = self._continuation_ids(prompt, plain, list(continuations), alone)
            longest = max((len(c) for c in conts), default=0)
            if not prompt_ids or len(prompt_ids) + longest > self.max_length:
                self.usage.failed += 1  # never truncated: a cut prompt would score a different question
                continue
            with torch.inference_mode():
                result[row] = self._score_one(prompt_ids, conts)
            self.usage.requests += 1
            self.usage.prompt_tokens += len(prompt_ids) + sum(len(c) for c in conts)
            if self.cache is not None:
                self.cache.put(key, [float(v) for v in result[row]])
        return result

    # -- generate --------------------------------------------------------------------------------------------------

    def chat_prompt(self, messages: list[dict]) -> str:
        """The final prompt string for chat ``messages``: the tokenizer's chat template when it has one (with the
        assistant's turn opened), else the contents joined by blank lines."""
        if getattr(self.tokenizer, "chat_template", None):
            from jinja2 import TemplateError

            try:
                # transformers renders the template in jinja2's ImmutableSandboxedEnvironment: a template reaching
                # for Python internals (__class__, __globals__, os) raises SecurityError instead of running.
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except TemplateError as err:
                raise ConfigError(
                    f"{WHERE}: the chat template of {self.source!r} failed ({_one_line(err)[:200]}); expected a "
                    "template that renders the messages in transformers' sandbox"
                ) from None
            return str(text)
        return "\n\n".join(str(m.get("content", "")) for m in messages)

    def _new_text(self, prompt_ids: list[int], new: list[int]) -> str:
        """The text ``new`` adds after the prompt, as a server returns it: SentencePiece and WordPiece drop the space
        that opens a text decoded alone, so decode prompt + new and keep what follows the prompt's own text."""
        before = self.tokenizer.decode(prompt_ids, skip_special_tokens=True)
        after = self.tokenizer.decode(prompt_ids + new, skip_special_tokens=True)
        if after.startswith(before):
            return after[len(before) :]
        return self.tokenizer.decode(new, skip_special_tokens=True)

    def _generate_one(self, prompt_ids: list[int], params: GenParams) -> list[Completion]:
        room = min(params.max_tokens, self.max_length - len(prompt_ids))
        sample = params.temperature > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": room,
            "do_sample": sample,
            "pad_token_id": self._pad,
            "return_dict_in_generate": True,
            "output_logits": True,
        }
        if sample:
            # temperature + top_p only, as the OpenAI-style GenParams mean: no top_k from the model's defaults
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
            kwargs["num_return_sequences"] = params.n
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)  # stop early; cut below
        ids = torch.tensor([prompt_ids], device=self.device)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type if devices else "cuda"):
            torch.manual_seed(params.seed)  # the cache key holds the seed, so the answer must follow from it
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        first = torch.log_softmax(out.logits[0][0].float(), dim=-1)
        values, indices = first.topk(min(_TOP_LOGPROBS, first.shape[-1]))
        top = {self._new_text(prompt_ids, [int(t)]): float(v) for v, t in zip(values, indices, strict=True)}
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        completions = []
        for seq in out.sequences[:, len(prompt_ids) :].tolist():
            ended = next((k for k, t in enumerate(seq) if t in eos_ids), None)
            new = seq if ended is None else seq[:ended]
            # A sequence stopped by a stop string is padded after it; pad tokens are special and decode to nothing.
            text = self._new_text(prompt_ids, new)
            self.usage.completion_tokens += len(new)
            cut = [text.index(s) for s in params.stop if s in text]
            if cut:
                completions.append(Completion(text[: min(cut)], dict(top), "stop"))
            else:
                reason = "stop" if ended is not None else "length"
                completions.append(Completion(text, dict(top), reason))
        if not sample:  # greedy: one decode, the same answer n times (transformers refuses n > 1 without sampling)
            completions = [copy.deepcopy(completions[0]) for _ in range(params.n)]
        return completions

    def generate(self, prompts: list[str], params: GenParams) -> list[list[Completion] | None]:
        """``params.n`` completions of each prompt (the new text only, stop strings cut off); greedy at temperature 0,
        else sampled with top_p, seeded by ``params.seed``; None for a prompt that leaves no room in the context."""
        answers: list[list[Completion] | None] = []
        for prompt in prompts:
            key = request_key(
                {"backend": self.fingerprint, "op": "generate", "prompt": prompt, "params": asdict(params)}
            )
            stored = self.cache.get(key) if self.cache is not None else None
            if stored is not None:
                answers.append([Completion(**c) for c in stored])
                self.usage.cached += 1
                continue
            prompt_ids = self._prompt_ids(self._encode([prompt])[0])
            if not prompt_ids or len(prompt_ids) >= self.max_length:
                self.usage.failed += 1
                answers.append(None)
                continue
            with torch.inference_mode():
                completions = self._generate_one(prompt_ids, params)
            self.usage.requests += 1
            self.usage.prompt_tokens += len(prompt_ids)
            if self.cache is not None:
                self.cache.put(key, [asdict(c) for c in completions])
            answers.append(completions)
        return answers

    def close(self) -> None:
        """Drop the model and tokenizer (the cache belongs to the caller)."""
        self.model = None
        self.tokenizer = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
