"""Multi-head self-attention and the transformer layer of the SepFormer family.

Attention goes through :func:`torch.nn.functional.scaled_dot_product_attention` (SDPA): it picks
fused flash / memory-efficient kernels on GPU and a fused kernel on CPU, and never materialises
the ``[L, L]`` weight matrix that long inter-chunk sequences would make expensive. The weight
layout matches ``torch.nn.MultiheadAttention`` (one ``[3D, D]`` input projection, one output
projection), so SpeechBrain checkpoints map onto it one tensor to one tensor.

Shape legend: ``B`` batch (or batch x chunks), ``L`` sequence length, ``D`` model width,
``H`` heads, ``F`` feed-forward width.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

TRANSFORMER_NORM_EPS = 1e-6  # SpeechBrain's transformer LayerNorm eps


class MultiHeadSelfAttention(nn.Module):
    """Self-attention over ``[B, L, D]`` with ``num_heads`` heads; optionally causal.

    Args:
        dim: model width ``D``; must be divisible by ``num_heads``.
        num_heads: number of heads ``H``.
        dropout: dropout on the attention weights (training only).
        causal: mask future positions (position ``i`` attends to ``j <= i`` only).

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, causal: bool = False) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be a positive multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        # torch.nn.MultiheadAttention's initialisation.
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, L, D] -> [B, L, D]``."""
        batch, length, dim = x.shape
        # [B, L, 3D] -> [3, B, H, L, D/H]: strided views, SDPA reads them without copies.
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        # [B, H, L, D/H] -> [B, L, D]
        return self.out(self.attend(q, k, v).transpose(1, 2).reshape(batch, length, dim))

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``softmax(q k^T / sqrt(D/H)) v`` per head of ``[B, H, L, D/H]`` (causal, with dropout as set)."""
        dropout = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=self.causal)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, dropout={self.dropout}, causal={self.causal}"


def feed_forward(dim: int, hidden: int, dropout: float = 0.0) -> nn.Sequential:
    """Position-wise ``Linear -> ReLU -> Dropout -> Linear`` (indices 0 and 3 hold the weights).

    The ReLU works in place on the first Linear's output (which autograd does not keep): one
    pass and one allocation of the widest activation fewer in training. So a forward hook on
    ``ffn[0]`` that keeps its output sees it after the ReLU; keep ``output.clone()`` there.
    """
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, dim)
    )


class TransformerLayer(nn.Module):
    """Transformer encoder layer: self-attention then feed-forward, each with a residual.

    ``pre_norm=True`` (SepFormer's choice, SpeechBrain ``normalize_before``) normalises the input
    of each branch: ``x + f(LN(x))``; ``pre_norm=False`` is the original post-norm
    ``LN(x + f(x))``.

    Args:
        dim: model width ``D``.
        num_heads: attention heads.
        ffn_dim: feed-forward width ``F`` (read back from the weights by :attr:`ffn_dim`, so a
            pruned ``ffn`` reports its own width).
        dropout: dropout on attention weights, the FFN hidden layer and both residual branches.
        pre_norm: pre-norm (True) or post-norm (False) residuals.
        causal: causal attention mask.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float = 0.0,
        pre_norm: bool = True,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.norm1 = nn.LayerNorm(dim, eps=TRANSFORMER_NORM_EPS)
        self.attention = MultiHeadSelfAttention(dim, num_heads, dropout, causal)
        self.norm2 = nn.LayerNorm(dim, eps=TRANSFORMER_NORM_EPS)
        self.ffn = feed_forward(dim, ffn_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    @property
    def ffn_dim(self) -> int:
        """Feed-forward width ``F``, read from the FFN's first Linear."""
        return self.ffn[0].weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        """``[B, L, D] -> [B, L, D]``."""
        if self.pre_norm:
            x = x + self.dropout(self.attention(self.norm1(x)))
            return x + self.dropout(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.dropout(self.attention(x)))
        return self.norm2(x + self.dropout(self.ffn(x)))
