"""RGB-D frames: file readers, back-projection to points that keep their pixel, scenes, a dataset, synthetic scenes.

Modules: :mod:`~alignkit.domains.pointcloud.rgbd.files` (intrinsics, poses, depth/colour/label images),
:mod:`~alignkit.domains.pointcloud.rgbd.geometry` (back-projection), :mod:`~alignkit.domains.pointcloud.rgbd.scenes`
(the frames of a scene folder), :mod:`~alignkit.domains.pointcloud.rgbd.dataset` (the ``rgbd-frames`` dataset)
and :mod:`~alignkit.domains.pointcloud.rgbd.synthetic` (a procedural dataset root).

Layouts read (one *scene* folder of registered colour/depth frames, ScanNet- or Open3D/Redwood-like)::

    scene/color/<stem>.jpg|png     RGB (resized to the depth size if it differs, as ScanNet's 1296x968 colour)
    scene/depth/<stem>.png         uint16 depth, metres = value / depth_scale, 0 = no depth (depth_scale: the
                                   layout's, DEPTH_SCALES in scenes.py: TUM 5000, ScanNet/Redwood 1000)
    scene/label/<stem>.png         optional per-pixel class index (255 = unlabeled)
    scene/pose/<stem>.txt          optional 4x4 camera-to-world pose (ScanNet), or
    scene/trajectory.log           optional Open3D/Redwood log: per frame a "id id n" line and 4 matrix rows
    intrinsics: scene/intrinsic/intrinsic_depth.txt, intrinsic/intrinsic_color.txt or intrinsic.txt
                (3x3 or ScanNet's 4x4), else a *.json in the scene holding Open3D's PinholeCameraIntrinsic
                (``intrinsic_matrix``: 9 numbers, column-major)

Camera frame: OpenCV (x right, y down, z forward, metres). A pixel at ``(row, col)`` with depth ``z``
back-projects to ``(x, y, z) = ((col - cx) z / fx, (row - cy) z / fy, z)``; a pose ``T`` (camera to
world) maps it to ``R p + t``.

A dataset root (``rgbd-frames``) holds scene folders, ``classes.txt`` (line k names label k) and
``train.txt`` / ``val.txt`` / ``test.txt`` listing the scene folders of each split.
:func:`~alignkit.domains.pointcloud.rgbd.synthetic.write_synthetic_scenes` writes such a root from procedural
labelled objects on a floor.
"""
