"""The classifier's network: standardised statistics → an MLP ensemble → calibrated logits."""

from __future__ import annotations

from pixarc.classify import DOMAINS


def build_model(n_features: int, hidden: int, members: int, dropout: float = 0.2):
    import torch
    import torch.nn as nn

    class DomainNet(nn.Module):
        """standardise → ``members`` MLPs (one hidden layer; none when ``hidden`` is 0)
        → mean logits / temperature. Mean/std and temperature are buffers, saved with the
        weights, so a loaded model needs nothing else."""

        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.zeros(n_features))
            self.register_buffer("std", torch.ones(n_features))
            self.register_buffer("temperature", torch.ones(()))

            def head():
                if hidden <= 0:
                    return nn.Linear(n_features, len(DOMAINS))
                return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, len(DOMAINS)))

            self.heads = nn.ModuleList(head() for _ in range(members))

        def member_logits(self, feats):
            """(members, batch, domains) raw logits; training fits each member on them."""
            x = (feats - self.mean) / self.std
            return torch.stack([h(x) for h in self.heads])

        def forward(self, feats):
            return self.member_logits(feats).mean(0) / self.temperature

    return DomainNet()
