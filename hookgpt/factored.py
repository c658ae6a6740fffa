"""FactoredMatrix: a product A @ B kept as its two factors.

A head's QK circuit (W_Q W_K^T) and OV circuit (W_V W_O) are `[d_model, d_model]` matrices of
rank at most d_head. Stored as factors they take d_head/d_model of the memory, and most questions
about them (singular values, eigenvalues, products with other matrices) are cheap to answer from
the factors. Leading dimensions (layer, head) broadcast.
"""

from typing import Union

import torch
from torch import Tensor


class FactoredMatrix:
    """The matrix `A @ B` with `A: [..., m, r]`, `B: [..., r, n]`, without forming it."""

    def __init__(self, A: Tensor, B: Tensor):
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(f"inner dimensions differ: A is {tuple(A.shape)}, B is {tuple(B.shape)}")
        self.A, self.B = A, B

    @property
    def shape(self) -> torch.Size:
        batch = torch.broadcast_shapes(self.A.shape[:-2], self.B.shape[:-2])
        return torch.Size((*batch, self.A.shape[-2], self.B.shape[-1]))

    @property
    def AB(self) -> Tensor:
        """The full matrix `[..., m, n]`."""
        return self.A @ self.B

    @property
    def BA(self) -> Tensor:
        """The `[..., r, r]` product in the other order (same non-zero eigenvalues as AB)."""
        return self.B @ self.A

    @property
    def T(self) -> "FactoredMatrix":
        return FactoredMatrix(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    def __matmul__(self, other: Union[Tensor, "FactoredMatrix"]) -> "FactoredMatrix":
        if isinstance(other, FactoredMatrix):
            return FactoredMatrix(self.A, (self.B @ other.A) @ other.B)
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other: Tensor) -> "FactoredMatrix":
        return FactoredMatrix(other @ self.A, self.B)

    def __getitem__(self, index) -> "FactoredMatrix":
        """Index the leading (layer, head) dimensions: `model.OV[1, 4]` is layer 1, head 4."""
        if not isinstance(index, tuple):
            index = (index,)
        batch = self.shape[:-2]
        A = self.A.expand(*batch, *self.A.shape[-2:])
        B = self.B.expand(*batch, *self.B.shape[-2:])
        return FactoredMatrix(A[index], B[index])

    def svd(self) -> tuple[Tensor, Tensor, Tensor]:
        """`U, S, Vh` of AB with only the r non-trivial singular values, computed from the factors."""
        Ua, Sa, Vha = torch.linalg.svd(self.A, full_matrices=False)
        Ub, Sb, Vhb = torch.linalg.svd(self.B, full_matrices=False)
        middle = Sa[..., :, None] * (Vha @ Ub) * Sb[..., None, :]
        Um, S, Vhm = torch.linalg.svd(middle, full_matrices=False)
        return Ua @ Um, S, Vhm @ Vhb

    @property
    def S(self) -> Tensor:
        return self.svd()[1]

    @property
    def eigenvalues(self) -> Tensor:
        """Non-zero eigenvalues of AB (those of BA), complex in general."""
        return torch.linalg.eigvals(self.BA)

    def norm(self) -> Tensor:
        """Frobenius norm."""
        return self.S.pow(2).sum(-1).sqrt()

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={tuple(self.shape)}, rank<={self.A.shape[-1]})"
