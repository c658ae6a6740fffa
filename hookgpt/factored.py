"""FactoredMatrix: a product A @ B kept as its two factors.

A head's QK circuit (W_Q W_K^T) and OV circuit (W_V W_O) are `[d_model, d_model]` matrices of
rank at most d_head. Stored as factors they take d_head/d_model of the memory, and most questions
about them (singular values, eigenvalues, products with other matrices) are cheap to answer from
the factors. Leading dimensions (layer, head) broadcast.

The API is TransformerLens's `FactoredMatrix` with its conventions, so code and numbers carry over:
`ldim`/`mdim`/`rdim` are the sizes of `A: [..., ldim, mdim]` and `B: [..., mdim, rdim]`;
`svd()` returns `(U, S, Vh)` with `AB = U @ diag(S) @ Vh.T` -- TransformerLens's `Vh` is the matrix of
right singular vectors as columns, `[..., rdim, mdim]`, not torch's `Vh`; indexing takes the leading
dimensions and then rows and columns of the matrix (an int row/column keeps its dimension).
"""

from typing import Any, Optional, Union

import torch
from jaxtyping import Complex, Float
from torch import Tensor


class FactoredMatrix:
    """The matrix `A @ B` with `A: [..., ldim, mdim]`, `B: [..., mdim, rdim]`, without forming it."""

    # raised for mismatched inner dimensions and unsupported operations; the TransformerLens
    # compatibility layer raises a subclass of AssertionError, as TransformerLens does
    shape_error: type = ValueError

    def __init__(self, A: Float[Tensor, "... ldim mdim_a"], B: Float[Tensor, "... mdim_b rdim"]):  # mdim_a == mdim_b checked below
        if A.ndim < 2 or B.ndim < 2:
            raise self.shape_error(f"FactoredMatrix needs two matrices, got A of shape {tuple(A.shape)} and B of shape {tuple(B.shape)}")
        if A.shape[-1] != B.shape[-2]:
            raise self.shape_error(f"inner dimensions differ: A is {tuple(A.shape)}, B is {tuple(B.shape)}")
        self.ldim, self.mdim, self.rdim = A.shape[-2], A.shape[-1], B.shape[-1]
        try:
            leading = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except RuntimeError:
            raise RuntimeError(
                f"Shape mismatch: the leading dimensions of A {tuple(A.shape)} and B {tuple(B.shape)} do not broadcast"
            ) from None
        self.shape = torch.Size((*leading, self.ldim, self.rdim))
        self.has_leading_dims = A.ndim > 2 or B.ndim > 2
        self.A = A.broadcast_to((*leading, self.ldim, self.mdim))
        self.B = B.broadcast_to((*leading, self.mdim, self.rdim))
        self._svd: Optional[tuple[Tensor, Tensor, Tensor]] = None

    def _new(self, A: Tensor, B: Tensor) -> "FactoredMatrix":
        return type(self)(A, B)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def pair(self) -> tuple[Tensor, Tensor]:
        return self.A, self.B

    @property
    def AB(self) -> Float[Tensor, "... ldim rdim"]:
        """The full matrix `[..., ldim, rdim]`."""
        return self.A @ self.B

    @property
    def BA(self) -> Float[Tensor, "... mdim mdim"]:
        """The `[..., mdim, mdim]` product in the other order (same non-zero eigenvalues as AB);
        only for square matrices (ldim == rdim)."""
        if self.ldim != self.rdim:
            raise self.shape_error(f"BA needs a square matrix (ldim == rdim), this one is {tuple(self.shape)}")
        return self.B @ self.A

    @property
    def T(self) -> "FactoredMatrix":
        return self._new(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    # ------------------------------------------------------------------ products

    def __matmul__(self, other: Union[Tensor, "FactoredMatrix"]) -> Union["FactoredMatrix", Tensor]:
        """`self @ other`: a vector gives a tensor `[..., ldim]`; a matrix or FactoredMatrix gives a
        FactoredMatrix whose inner dimension is the smaller one available."""
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        if not isinstance(other, Tensor):
            return NotImplemented
        if other.ndim < 2:
            if other.shape[-1] != self.rdim:
                raise self.shape_error(f"vector of length {other.shape[-1]} does not match rdim={self.rdim}")
            return (self.A @ (self.B @ other[..., None]))[..., 0]
        if other.shape[-2] != self.rdim:
            raise self.shape_error(f"right matrix {tuple(other.shape)} does not match rdim={self.rdim} of {tuple(self.shape)}")
        if self.rdim > self.mdim:
            return self._new(self.A, self.B @ other)
        return self._new(self.AB, other)

    def __rmatmul__(self, other: Tensor) -> Union["FactoredMatrix", Tensor]:
        if not isinstance(other, Tensor):
            return NotImplemented
        if other.shape[-1] != self.ldim:
            raise self.shape_error(f"left matrix {tuple(other.shape)} does not match ldim={self.ldim} of {tuple(self.shape)}")
        if other.ndim < 2:
            return ((other[None] @ self.A) @ self.B)[..., 0, :]
        if self.ldim > self.mdim:
            return self._new(other @ self.A, self.B)
        return self._new(other, self.AB)

    def __mul__(self, scalar: Union[int, float, Tensor]) -> "FactoredMatrix":
        """Multiplication by a scalar (a number or a one-element tensor); use `@` for matrices."""
        if isinstance(scalar, Tensor) and scalar.numel() != 1:
            raise self.shape_error(f"* takes a scalar, got a tensor of shape {tuple(scalar.shape)}; use @ for a matrix product")
        if not isinstance(scalar, (int, float, Tensor)):
            return NotImplemented
        return self._new(self.A * scalar, self.B)

    __rmul__ = __mul__

    # ------------------------------------------------------------------ indexing

    def __getitem__(self, index: Any) -> "FactoredMatrix":
        """Index leading dimensions first (`model.OV[1, 4]` is layer 1, head 4), then the rows and
        columns of the matrix: `fm[..., rows, cols]` written out, e.g. `fm[0, 1, :, [0, 2]]`. An int
        row or column keeps its dimension (the result is still a matrix)."""
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis or i is None for i in index):
            raise IndexError("FactoredMatrix indexing does not support ... or None; index each dimension explicitly")
        if len(index) > self.ndim:
            raise IndexError(f"{len(index)} indices for a FactoredMatrix with {self.ndim} dimensions {tuple(self.shape)}")
        n_lead = self.ndim - 2
        lead, rows_cols = index[:n_lead], index[n_lead:]
        A, B = self.A[lead], self.B[lead]
        if len(rows_cols) >= 1:
            A = A[..., self._keep_dim(rows_cols[0], self.ldim), :]
        if len(rows_cols) == 2:
            B = B[..., :, self._keep_dim(rows_cols[1], self.rdim)]
        return self._new(A, B)

    @staticmethod
    def _keep_dim(i: Any, size: int) -> Any:
        if isinstance(i, int) and not isinstance(i, bool):
            if not -size <= i < size:
                raise IndexError(f"index {i} is out of range for a dimension of size {size}")
            i %= size
            return slice(i, i + 1)
        return i

    def unsqueeze(self, k: int) -> "FactoredMatrix":
        return self._new(self.A.unsqueeze(k), self.B.unsqueeze(k))

    # ------------------------------------------------------------------ spectrum

    def svd(self) -> tuple[Tensor, Tensor, Tensor]:
        """TransformerLens's convention: `U [..., ldim, k]`, `S [..., k]`, `Vh [..., rdim, k]` with
        `AB = U @ diag(S) @ Vh.T` (k = the rank bound), computed from the factors (cached).
        `Vh` here is V, the right singular vectors as columns (torch's `Vh` is its transpose)."""
        if self._svd is None:
            Ua, Sa, Vha = torch.linalg.svd(self.A, full_matrices=False)
            Ub, Sb, Vhb = torch.linalg.svd(self.B, full_matrices=False)
            middle = Sa[..., :, None] * (Vha @ Ub) * Sb[..., None, :]
            Um, S, Vhm = torch.linalg.svd(middle, full_matrices=False)
            self._svd = (Ua @ Um, S, (Vhm @ Vhb).transpose(-2, -1))
        return self._svd

    @property
    def U(self) -> Tensor:
        return self.svd()[0]

    @property
    def S(self) -> Tensor:
        return self.svd()[1]

    @property
    def Vh(self) -> Tensor:
        return self.svd()[2]

    @property
    def eigenvalues(self) -> Complex[Tensor, "... mdim"]:
        """Eigenvalues of AB (those of BA: AB has the same ones plus zeros), complex in general."""
        BA = self.BA
        if BA.dtype in (torch.float16, torch.bfloat16):
            BA = BA.float()
        return torch.linalg.eigvals(BA)

    def norm(self) -> Tensor:
        """Frobenius norm."""
        return self.S.pow(2).sum(-1).sqrt()

    def make_even(self) -> "FactoredMatrix":
        """The same matrix as `(U sqrt(S)) @ (sqrt(S) Vh^T)`: both factors with equal norms."""
        root = self.S.sqrt()
        return self._new(self.U * root[..., None, :], root[..., :, None] * self.Vh.transpose(-2, -1))

    def collapse_l(self) -> Tensor:
        """`S Vh^T`, `[..., k, rdim]`: the matrix with its left orthogonal factor U removed."""
        return self.S[..., :, None] * self.Vh.transpose(-2, -1)

    def collapse_r(self) -> Tensor:
        """`U S`, `[..., ldim, k]`: the matrix with its right orthogonal factor removed."""
        return self.U * self.S[..., None, :]

    def get_corner(self, k: int = 3) -> Tensor:
        """The top-left `k x k` corner of AB (and the first k of each leading dim), cheaply."""
        corner = self.A[..., :k, :] @ self.B[..., :, :k]
        return corner[tuple(slice(0, k) for _ in corner.shape)]

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={tuple(self.shape)}, mdim={self.mdim})"
