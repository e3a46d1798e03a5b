from nncf_ext.algorithms.l1_sparsity.algo import L1Sparsity, L1SparsityConfig

__all__ = ["L1Sparsity", "L1SparsityConfig"]
