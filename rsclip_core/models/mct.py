"""MCt: MobileCLIP's hybrid text encoder (Vasu et al., CVPR 2024, sec. 4 / Apple ml-mobileclip).

Token embedding + learned positional embedding, then
``[Text-RepMixer] + N x (pre-norm self-attention layer) + [Text-RepMixer]``, a final LayerNorm and
the feature at the end-of-text token (argmax of the token ids, as CLIP) projected to the joint
embedding. Attention is non-causal.

A *Text-RepMixer* block is the 1-D analogue of FastViT's RepMixer: convolutional token mixing
with a train-time structure that :meth:`TextRepMixer.reparameterize` folds into one depthwise
``Conv1d`` with bias, followed by a ConvFFN (depthwise conv + BN, then a 1x1-conv MLP). All convs
are ``Conv1d`` on ``[N, C, L]`` so the exported graph stays simple for ONNX / Core ML.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


def _fuse_conv_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight/bias of a conv followed by an eval-mode BatchNorm, as one conv."""
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    fused_w = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    base = bias if bias is not None else torch.zeros_like(bn.running_mean)
    fused_b = bn.bias + (base - bn.running_mean) * scale
    return fused_w, fused_b


def _identity_kernel(dim: int, kernel_size: int, like: torch.Tensor) -> torch.Tensor:
    """Depthwise ``[dim, 1, k]`` kernel that passes its input through unchanged."""
    kernel = torch.zeros(dim, 1, kernel_size, dtype=like.dtype, device=like.device)
    kernel[:, 0, kernel_size // 2] = 1.0
    return kernel


class TextRepMixer(nn.Module):
    """Reparameterizable depthwise 1-D token mixing: ``x + ls * (ConvBN(x) - BN(x))``.

    After :meth:`reparameterize` the block is a single depthwise ``Conv1d`` with bias.
    """

    def __init__(self, dim: int, kernel_size: int = 11, layer_scale_init: float = 1e-5) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"repmixer_kernel must be odd, got {kernel_size}")
        self.dim = dim
        self.kernel_size = kernel_size
        self.mixer_conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)
        self.mixer_bn = nn.BatchNorm1d(dim)
        self.norm = nn.BatchNorm1d(dim)  # the skip branch
        self.layer_scale = nn.Parameter(layer_scale_init * torch.ones(dim))
        self.reparam_conv: nn.Conv1d | None = None

    @property
    def reparameterized(self) -> bool:
        return self.reparam_conv is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, C, L]
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        mixed = self.mixer_bn(self.mixer_conv(x))
        return x + self.layer_scale[None, :, None] * (mixed - self.norm(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold both branches, the skip and the layer scale into one depthwise conv (in place)."""
        if self.reparam_conv is not None:
            return
        w_mix, b_mix = _fuse_conv_bn(self.mixer_conv.weight, None, self.mixer_bn)
        ident = _identity_kernel(self.dim, self.kernel_size, w_mix)
        w_norm, b_norm = _fuse_conv_bn(ident, None, self.norm)
        scale = self.layer_scale.reshape(-1, 1, 1)
        conv = nn.Conv1d(
            self.dim, self.dim, self.kernel_size, padding=self.kernel_size // 2, groups=self.dim, bias=True
        ).to(device=w_mix.device, dtype=w_mix.dtype)
        conv.weight.copy_(ident + scale * (w_mix - w_norm))
        cast(torch.Tensor, conv.bias).copy_(self.layer_scale * (b_mix - b_norm))
        self.reparam_conv = conv
        for name in ("mixer_conv", "mixer_bn", "norm", "layer_scale"):
            delattr(self, name)


class ConvFFN(nn.Module):
    """Depthwise conv + BN, then a 1x1-conv MLP (FastViT's ConvMlp in 1-D)."""

    def __init__(self, dim: int, hidden: int, kernel_size: int = 11) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)
        self.bn = nn.BatchNorm1d(dim)
        self.fc1 = nn.Conv1d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv1d(hidden, dim, 1)
        self.fused_conv: nn.Conv1d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fused_conv(x) if self.fused_conv is not None else self.bn(self.conv(x))
        return self.fc2(self.act(self.fc1(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BN into the depthwise conv."""
        if self.fused_conv is not None:
            return
        w, b = _fuse_conv_bn(self.conv.weight, None, self.bn)
        conv = nn.Conv1d(
            self.conv.in_channels,
            self.conv.out_channels,
            self.conv.kernel_size[0],
            padding=self.conv.padding[0],
            groups=self.conv.groups,
            bias=True,
        ).to(device=w.device, dtype=w.dtype)
        conv.weight.copy_(w)
        cast(torch.Tensor, conv.bias).copy_(b)
        self.fused_conv = conv
        del self.conv, self.bn


class TextRepMixerBlock(nn.Module):
    """Text-RepMixer token mixing followed by a layer-scaled ConvFFN residual; ``[N, L, C]`` in/out."""

    def __init__(self, dim: int, kernel_size: int = 11, mlp_ratio: float = 4.0, layer_scale_init: float = 1e-5) -> None:
        super().__init__()
        self.token_mixer = TextRepMixer(dim, kernel_size, layer_scale_init)
        self.ffn = ConvFFN(dim, int(dim * mlp_ratio), kernel_size)
        self.layer_scale = nn.Parameter(layer_scale_init * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # [N, C, L]
        x = self.token_mixer(x)
        x = x + self.layer_scale[None, :, None] * self.ffn(x)
        return x.transpose(1, 2)

    def reparameterize(self) -> None:
        self.token_mixer.reparameterize()
        self.ffn.reparameterize()


class AttentionBlock(nn.Module):
    """Pre-norm transformer encoder layer (non-causal multi-head self-attention + GELU MLP)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"text width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.ln_1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.ln_2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        q, k, v = self.qkv(self.ln_1(x)).reshape(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v)
        x = x + self.out_proj(attn.transpose(1, 2).reshape(n, length, dim))
        return x + self.mlp(self.ln_2(x))


class MCtTextTower(nn.Module):
    """MobileCLIP MCt text encoder + linear projection to ``embed_dim``.

    ``tokens``: ``LongTensor [N, context_length]`` with the end-of-text token having the largest
    id in each row (CLIP BPE), as open_clip pools.
    """

    def __init__(
        self,
        embed_dim: int,
        context_length: int = 77,
        vocab_size: int = 49408,
        width: int = 512,
        heads: int = 8,
        layers: int = 4,
        repmixer_kernel: int = 11,
        repmixer_blocks: tuple[int, int] | list[int] = (1, 1),
        mlp_ratio: float = 4.0,
        repmixer_mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.width = width
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        before, after = repmixer_blocks
        blocks: list[nn.Module] = [TextRepMixerBlock(width, repmixer_kernel, repmixer_mlp_ratio) for _ in range(before)]
        blocks += [AttentionBlock(width, heads, mlp_ratio) for _ in range(layers)]
        blocks += [TextRepMixerBlock(width, repmixer_kernel, repmixer_mlp_ratio) for _ in range(after)]
        self.blocks = nn.ModuleList(blocks)
        self.ln_final = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.proj.weight, std=self.width**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.context_length:
            raise ValueError(f"tokens have length {tokens.shape[1]} > context_length {self.context_length}")
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return self.proj(pooled)

    def reparameterize(self) -> None:
        """Fold every Text-RepMixer block (in place)."""
        for block in self.blocks:
            if isinstance(block, TextRepMixerBlock):
                block.reparameterize()
