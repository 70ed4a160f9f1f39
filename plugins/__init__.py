"""Integrations (COLMAP, NeRF/3DGS export, point clouds), installed as ``sddr_pipeline.plugins``.

Each integration registers itself in :data:`sddr_pipeline.registry.INTEGRATIONS`; third
parties add theirs through the ``sddr_pipeline.integrations`` entry-point group.
"""
