"""M-AdaCode (masked adaptive codebooks, PAPERS.md §3), sized for a small CPU.

Jiang, Wang, Chen, "Neural Image Compression Using Masked Sparse Visual Representation"
(WACV 2024), built on AdaCode (ICCV 2023)::

    x ─E─▶ y (1/8 res, D ch) ─┬─ K basis codebooks ─▶ index maps z_1..z_K   (all K sent)
                              └─ weight predictor P ─▶ W ∈ R^{u×v×K}
                                   └─ top-m |W| per position ─▶ kept ids + ŵ (sent)
    decoder: degraded ỹ(l) = Σ_kept ŵ_k(l)·c_k[z_k(l)]
             filler F(ỹ, masked W, mask) ─▶ all K weights w'(l) = masked W + F(...)
             ŷ(l) = Σ_k w'_k(l)·c_k[z_k(l)]  ─G─▶ x̂

Basis codebooks by **residual VQ**: codebook k quantises what codebooks 1..k−1 left of y
(z_k = nearest codeword to y − Σ_{j<k} c_j[z_j]). With K codebooks trained on one latent
with the same VQ loss (the previous version) they converge to near-duplicates, so the
weights have nothing to choose between; residual stages differ by construction (each
models a different, shrinking error scale), weights ≈ 1 reproduce y, and masking a
stage drops a known part of the detail that the filler learns to re-weight from the
codewords that stayed. The alternative, one codebook per content domain (AdaCode's
semantic partition), needs a separate stage-1 model per domain and enough images per
domain (screenshots: 38 crops here); residual VQ trains in one pass on a CPU.

Operating points (m is the rate knob; every index map is always transmitted):
* m = K: AdaCode. All K weights sent, no kept-codebook ids.
* 1 < m < K: the kept set as one symbol per position (one of C(K, m)), m weights.
* m = 1: the Gumbel-softmax one-hot mode. A hard one-hot selector (straight-through
  gradients) picks one codebook per position with the sign of its weight; one symbol
  of 2K values (codebook, sign) per position, no weight magnitudes.
Weights live on an integer grid (step 1/8, |w| ≤ 2: 33 symbols). Sizes: K = 4
codebooks of 64 codewords of dim 32 (6 bits per index before entropy coding).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

K_BOOKS = 4
BOOK_SIZE = 64
DIM = 32
W_STEP = 1 / 8
W_MAX = 2.0
W_LEVELS = int(2 * W_MAX / W_STEP) + 1  # integer weights in [-16, 16] -> 33 symbols
W_OFFSET = W_LEVELS // 2


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GELU())


def _up(cin: int, cout: int) -> nn.Sequential:
    # sub-pixel convolution: the work stays at the lower resolution (cheap on a CPU)
    return nn.Sequential(nn.Conv2d(cin, 4 * cout, 3, padding=1), nn.PixelShuffle(2), nn.GELU())


def combinations(k: int, m: int) -> list[tuple[int, ...]]:
    """The kept sets for 1 < m < K, in a fixed order: symbol s means ``combinations(k, m)[s]``."""
    return list(itertools.combinations(range(k), m))


def select_symbols(k: int, m: int) -> int:
    """How many values the per-position selection symbol takes (0: nothing is sent)."""
    if m == k:
        return 0
    return 2 * k if m == 1 else len(combinations(k, m))


class SVRModel(nn.Module):
    def __init__(self, width: int = 32, k: int = K_BOOKS, size: int = BOOK_SIZE, dim: int = DIM):
        super().__init__()
        self.k, self.size, self.dim = k, size, dim
        self.encoder = nn.Sequential(_block(3, width // 2, 2), _block(width // 2, width, 2), _block(width, width, 2),
                                     _block(width, width), nn.Conv2d(width, dim, 1))
        self.codebooks = nn.Parameter(torch.randn(k, size, dim) * 0.1)
        self.predictor = nn.Sequential(_block(dim, width), nn.Conv2d(width, k, 1))
        self.filler = nn.Sequential(_block(dim + 2 * k, width), _block(width, width), nn.Conv2d(width, k, 1))
        self.decoder = nn.Sequential(_block(dim, width), _block(width, width), _up(width, width), _up(width, width),
                                     _up(width, width // 2), nn.Conv2d(width // 2, 3, 3, padding=1))
        with torch.no_grad():
            # start at residual VQ (all weights ≈ 1, earlier stages preferred by top-m) and an
            # identity filler, so stage 2 begins from what stage 1 learned
            self.predictor[-1].weight.mul_(0.01)
            self.predictor[-1].bias.copy_(1 + 0.01 * torch.arange(k, 0, -1, dtype=torch.float32))
            self.filler[-1].weight.zero_()
            self.filler[-1].bias.zero_()
        # learned entropy-coder statistics (integer counts, add-one smoothed), filled by training:
        # index maps per codebook, the selection symbol per m, the integer weights per m
        self.register_buffer("index_counts", torch.ones(k, size, dtype=torch.int64))
        self.register_buffer("select_counts", torch.ones(k + 1, 2 * k, dtype=torch.int64))
        self.register_buffer("weight_counts", torch.ones(k + 1, W_LEVELS, dtype=torch.int64))

    @classmethod
    def from_weights(cls, entry, state) -> "SVRModel":
        """The model a weights.json ``entry`` describes, holding ``state`` (float32)."""
        model = cls(width=int(entry["width"]), k=int(entry["k"]), size=int(entry["size"]), dim=int(entry["dim"]))
        model.load_state_dict(state)
        return model.float()

    # --------------------------------------------------------------- residual VQ
    def quantise(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Residual VQ of y (B, D, u, v): indices (B, K, u, v), codewords (B, K, D, u, v)
        (differentiable w.r.t. the codebooks) and the residual each stage saw (B, K, D, u, v)."""
        b, d, u, v = y.shape
        r = y.permute(0, 2, 3, 1).reshape(-1, d)
        idx, cws, res = [], [], []
        for k in range(self.k):
            book = self.codebooks[k]
            dist = r.pow(2).sum(1, keepdim=True) - 2 * r @ book.t() + book.pow(2).sum(1)[None]
            i = dist.argmin(1)
            cw = book[i]
            idx.append(i)
            cws.append(cw)
            res.append(r)
            r = r - cw.detach()
        shape = lambda t: t.view(b, u, v, d).permute(0, 3, 1, 2)  # noqa: E731
        return (torch.stack(idx, 1).view(b, u, v, self.k).permute(0, 3, 1, 2),
                torch.stack([shape(c) for c in cws], 1), torch.stack([shape(t) for t in res], 1))

    def codewords(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, K, D, u, v) codewords of index maps (B, K, u, v): a table look-up, exact on every device."""
        cw = torch.stack([self.codebooks[k][idx[:, k]] for k in range(self.k)], 1)  # B,K,u,v,D
        return cw.permute(0, 1, 4, 2, 3)

    # --------------------------------------------------------------- masking and filling
    def fill(self, cw: torch.Tensor, masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Decoder: the degraded latent from the kept weights, the filler's K weights, ŷ."""
        degraded = (cw * masked[:, :, None]).sum(1)
        weights = masked + self.filler(torch.cat([degraded, masked, mask], 1))
        return (cw * weights[:, :, None]).sum(1)

    def mask_weights(self, w: torch.Tensor, m: int, tau: float = 1.0, hard_noise: bool = True):
        """Training-time masking of the predicted weights W (B, K, u, v) with straight-through
        gradients: (masked weights, kept mask). m = 1 is the hard Gumbel-softmax one-hot
        selector carrying the weight's sign; m > 1 keeps the top-m |W|, quantised."""
        if m == 1:
            g = -torch.log(-torch.log(torch.rand_like(w).clamp(1e-9, 1 - 1e-9))) if hard_noise else 0.0
            soft = F.softmax((w.abs() + g) / tau, dim=1)
            hard = F.one_hot(soft.argmax(1), self.k).permute(0, 3, 1, 2).to(w.dtype)
            select = hard + (soft - soft.detach())  # exactly one-hot forward, soft gradient
            sign = torch.where(w < 0, -1.0, 1.0) + (torch.tanh(w) - torch.tanh(w).detach())
            return select * sign, hard
        wc = w.clamp(-W_MAX, W_MAX)
        wq = wc + (torch.round(wc / W_STEP) * W_STEP - wc).detach()
        kept = w.abs().topk(m, dim=1).indices
        mask = torch.zeros_like(w).scatter(1, kept, 1.0)
        return wq * mask, mask

    def selection_probs(self, w: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
        """The m = 1 selection symbol's distribution at every position (B, 2K, u, v): the
        selector's softmax over |W| without noise, each codebook's sign fixed by its weight
        (symbol 2k + negative, as :meth:`analyse` sends it). Differentiable in W: what a rate
        term on the selection symbols trains through."""
        soft = F.softmax(w.abs() / tau, dim=1)
        negative = (w < 0).to(w.dtype)
        return torch.stack([soft * (1 - negative), soft * negative], 2).flatten(1, 2)

    def forward(self, x: torch.Tensor, m: int | None, tau: float = 1.0) -> dict[str, torch.Tensor]:
        """Training pass. ``m=None``: stage 1 (plain residual VQ, all weights 1).
        Returns x̂ and the VQ losses (codebook and commitment); in stage 2 also the m = 1
        selection symbols' distribution (:meth:`selection_probs`)."""
        y = self.encoder(x)
        _, cw, res = self.quantise(y)
        codebook = F.mse_loss(cw, res.detach())
        y_q = cw.sum(1)
        commit = F.mse_loss(y, y_q.detach())
        out = {"codebook": codebook, "commit": commit}
        if m is None:
            y_hat = y + (y_q - y).detach()  # straight-through to the encoder
        else:
            cw = cw.detach()  # stage 2: codebooks and encoder are frozen
            w = self.predictor(y)
            masked, mask = self.mask_weights(w, m, tau)
            y_hat = self.fill(cw, masked, mask)
            out["select_probs"] = self.selection_probs(w, tau)
        return {"x_hat": self.decoder(y_hat), **out}

    # --------------------------------------------------------------- the integers that cross the wire
    def analyse(self, x: torch.Tensor, m: int):
        """Encoder side: index maps (B, K, u, v); selection symbols (B, u, v) or None (m = K);
        integer weights (B, m, u, v) of the kept codebooks in id order, or None (m = 1)."""
        y = self.encoder(x)
        idx, _, _ = self.quantise(y)
        w = self.predictor(y)
        if m == 1:
            best = w.abs().argmax(1)
            negative = (torch.gather(w, 1, best[:, None])[:, 0] < 0).long()
            return idx, best * 2 + negative, None
        kept = w.abs().topk(m, dim=1).indices.sort(dim=1).values
        w_int = torch.round(torch.gather(w, 1, kept).clamp(-W_MAX, W_MAX) / W_STEP).long()
        if m == self.k:
            return idx, None, w_int
        code = sum(kept[:, j] * self.k**j for j in range(m))  # kept set -> its combination number
        lut = torch.zeros(self.k**m, dtype=torch.long, device=x.device)
        for s, combo in enumerate(combinations(self.k, m)):
            lut[sum(c * self.k**j for j, c in enumerate(combo))] = s
        return idx, lut[code], w_int

    def masked_from_symbols(self, m: int, select: torch.Tensor | None, w_int: torch.Tensor | None,
                            shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder side: the masked weight map and kept mask (B, K, u, v) from the integers.
        Integer arithmetic, then an exact conversion (multiples of 1/8) to float."""
        b, u, v = shape
        if m == 1:
            book, negative = select // 2, select % 2
            mask = F.one_hot(book, self.k).permute(0, 3, 1, 2)
            masked = mask * (1 - 2 * negative)[:, None]
            return masked.float(), mask.float()
        if m == self.k:
            kept = torch.arange(self.k).view(1, self.k, 1, 1).expand(b, -1, u, v)
        else:
            table = torch.tensor(combinations(self.k, m), dtype=torch.long)  # (C, m)
            kept = table[select].permute(0, 3, 1, 2)
        masked = torch.zeros(b, self.k, u, v, dtype=torch.long).scatter(1, kept, w_int)
        mask = torch.zeros(b, self.k, u, v, dtype=torch.long).scatter(1, kept, 1)
        return masked.float() * W_STEP, mask.float()

    def synthesise(self, idx: torch.Tensor, masked: torch.Tensor, mask: torch.Tensor,
                   stages: int | None = None) -> torch.Tensor:
        """Pixels from the index maps and the masked weight map (floats from here on). With
        ``stages`` < K only the first ``stages`` residual stages were sent: the others'
        codewords are zero, so ŷ = Σ_{k<stages} w'_k c_k[z_k] (``idx`` beyond them is ignored)."""
        cw = self.codewords(idx)
        if stages is not None and stages < self.k:
            cw = torch.cat([cw[:, :stages], torch.zeros_like(cw[:, stages:])], 1)
        return self.decoder(self.fill(cw, masked, mask))
