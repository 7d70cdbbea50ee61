"""Point-cloud domain: point ops, readers of point/mesh files and dataset layouts, rendering, PointNet++ and
Point-BERT towers, ULIP, RGB-D back-projection and Text4Point.

Nothing is imported here: the registries import each module when a config names what it registers.
"""
