"""Medical domain: report handling shared by chest X-ray and echo (``reports``, ``tables``, ``dicom``,
``metrics``), the chest X-ray package ``xray`` and the echocardiography package ``echo``.

Nothing is imported here: the registries import each module when a config names what it registers.
"""
