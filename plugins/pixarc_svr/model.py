"""M-AdaCode-style sparse visual representation (PAPERS.md §3), sized for this project.

Jiang, Wang, Chen, "Neural Image Compression Using Masked Sparse Visual Representation"
(WACV 2024), built on AdaCode (ICCV 2023)::

    x ─E─▶ y (1/8 res, D ch) ─┬─ nearest codeword in each of K codebooks ─▶ z_k(l)
                              └─ weight predictor P ─▶ w(l) ∈ R^K ─ top-m |w| ─▶ kept ids, ŵ
    decoder: degraded ỹ(l) = Σ_kept ŵ_k c_k[z_k(l)]
             weight filler F(ỹ) ─▶ weights for the kept codewords ─▶ ŷ(l) ─G─▶ x̂

Choices (the paper leaves sizes to the implementation; AdaCode uses K=5 codebooks of
512/256/512/256/256 codewords of dim 256): K=4 codebooks of 256 codewords of dim 64, so
an index is one byte and the model trains on a single GPU in minutes. Only indices sent
for the kept codebooks, their codebook ids and (for m > 1) weights on an integer grid
(step 1/32, |w| ≤ 4) cross the wire; m is the rate knob (1..K). m = 1 sends no weights:
the kept codeword enters with weight 1 (the paper's Gumbel one-hot mode).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

K_BOOKS = 4
BOOK_SIZE = 256
DIM = 64
W_STEP = 1 / 32
W_MAX = 4.0
W_LEVELS = int(2 * W_MAX / W_STEP) + 1  # integer weights in [-128, 128] -> 257 symbols


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GELU())


class SVRModel(nn.Module):
    def __init__(self, width: int = 64, k: int = K_BOOKS, size: int = BOOK_SIZE, dim: int = DIM):
        super().__init__()
        self.k, self.size, self.dim = k, size, dim
        self.encoder = nn.Sequential(_block(3, width), _block(width, width, 2), _block(width, width, 2),
                                     _block(width, width, 2), nn.Conv2d(width, dim, 1))
        self.codebooks = nn.Parameter(torch.randn(k, size, dim) * 0.5)
        self.predictor = nn.Sequential(_block(dim, width), nn.Conv2d(width, k, 1))
        self.filler = nn.Sequential(_block(dim + k, width), nn.Conv2d(width, k, 1))
        up = []
        for _ in range(3):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), _block(width, width)]
        self.decoder = nn.Sequential(_block(dim, width), *up, nn.Conv2d(width, 3, 3, padding=1))
        # learned index statistics (counts) for the entropy coder; uniform until trained
        self.register_buffer("index_counts", torch.ones(k, size))
        self.register_buffer("weight_counts", torch.ones(W_LEVELS))

    # --------------------------------------------------------------- analysis
    def indices(self, y: torch.Tensor) -> torch.Tensor:
        """Nearest codeword per codebook: (B, K, u, v) int64."""
        b, d, u, v = y.shape
        flat = y.permute(0, 2, 3, 1).reshape(-1, d)  # (N, D)
        dist = (flat.pow(2).sum(1, keepdim=True)[None] - 2 * torch.einsum("nd,ksd->kns", flat, self.codebooks)
                + self.codebooks.pow(2).sum(-1)[:, None, :])
        return dist.argmin(-1).view(self.k, b, u, v).permute(1, 0, 2, 3)

    def codewords(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, K, D, u, v) codewords for indices (B, K, u, v)."""
        cw = torch.stack([self.codebooks[k][idx[:, k]] for k in range(self.k)], 1)  # B,K,u,v,D
        return cw.permute(0, 1, 4, 2, 3)

    def analyse(self, x: torch.Tensor, m: int):
        """Encoder side: indices, kept codebook ids (B, m, u, v) and integer weights."""
        y = self.encoder(x)
        idx = self.indices(y)
        w = self.predictor(y)  # B,K,u,v
        kept = w.abs().topk(m, dim=1).indices.sort(dim=1).values
        w_kept = torch.gather(w, 1, kept)
        w_int = torch.round(w_kept.clamp(-W_MAX, W_MAX) / W_STEP).to(torch.int64)
        return idx, kept, w_int

    # --------------------------------------------------------------- synthesis
    def synthesise(self, idx_kept: torch.Tensor, kept: torch.Tensor, w_int: torch.Tensor | None) -> torch.Tensor:
        """Decoder side from integers only. idx_kept/kept: (B, m, u, v); w_int None for m = 1."""
        b, m, u, v = kept.shape
        flat = self.codebooks.reshape(self.k * self.size, self.dim)
        cw = flat[kept * self.size + idx_kept].permute(0, 1, 4, 2, 3)  # B,m,D,u,v
        w = torch.ones(b, m, u, v, device=cw.device) if w_int is None else w_int.float() * W_STEP
        degraded = (cw * w[:, :, None]).sum(1)
        mask = torch.zeros(b, self.k, u, v, device=cw.device).scatter(1, kept, w)
        refined = self.filler(torch.cat([degraded, mask], 1))  # weights for every codebook
        w_final = torch.gather(refined, 1, kept) + w
        y_hat = (cw * w_final[:, :, None]).sum(1)
        return self.decoder(y_hat)

    def forward(self, x: torch.Tensor, m: int):
        """Training pass: straight-through indices and weights; returns (x̂, vq loss)."""
        y = self.encoder(x)
        idx = self.indices(y)
        cw = self.codewords(idx)  # B,K,D,u,v
        vq = F.mse_loss(cw, y[:, None].detach().expand_as(cw)) + 0.25 * F.mse_loss(y[:, None].expand_as(cw), cw.detach())
        w = self.predictor(y)
        kept = w.abs().topk(m, dim=1).indices
        w_kept = torch.gather(w, 1, kept).clamp(-W_MAX, W_MAX)
        w_q = w_kept + (torch.round(w_kept / W_STEP) * W_STEP - w_kept).detach()
        if m == 1:
            w_q = torch.ones_like(w_q)
        cw_kept = torch.gather(cw, 1, kept[:, :, None].expand(-1, -1, self.dim, -1, -1))
        # straight-through: the decoder sees codewords, gradients reach the encoder output
        y_st = y[:, None] + (cw_kept - y[:, None]).detach()
        degraded = (y_st * w_q[:, :, None]).sum(1)
        mask = torch.zeros_like(w).scatter(1, kept, w_q)
        refined = self.filler(torch.cat([degraded, mask], 1))
        w_final = torch.gather(refined, 1, kept) + w_q
        y_hat = (y_st * w_final[:, :, None]).sum(1)
        return self.decoder(y_hat), vq
