"""The paper's edit (format v1): every residual writer reads w̄ = W.mean(dim=0), computed from the weights at load."""

from .edit import MeanRead

METHOD = MeanRead()
