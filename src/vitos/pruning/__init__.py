"""Token pruning for the sparse branch: boxes -> keep masks (boxes.py), pruned-token fusion (fusion.py),
and sparse sequence assembly (sparse.py)."""
