"""A synthetic chest X-ray archive in the real MIMIC-CXR-JPG layout (the data of ``alignkit demo xray``).

- :mod:`.plans`: study plans (subjects, findings with severity and report mention, decoys, devices);
- drawing: :mod:`.canvas` (primitives), :mod:`.anatomy` (the normal chest), :mod:`.findings` (the six findings
  and their masks), :mod:`.overlays` (look-alikes and devices), :mod:`.render` (frontal and lateral images);
- :mod:`.reports`: MIMIC-style reports and their CheXpert labels;
- :mod:`.archive`: :func:`~.archive.write_synthetic_mimic`, the files and CSVs.
"""
