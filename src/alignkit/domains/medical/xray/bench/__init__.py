"""BenchX-style evaluation of pretrained chest X-ray models (Zhou et al., 2024, "BenchX: A Unified Benchmark
Framework for Medical Vision-Language Pretraining on Chest X-Rays", arXiv:2410.21969; github.com/yangzhou12/BenchX).

- :mod:`.shared`: the sample format, reading splits, encoder features, label subsets, early stopping;
- one module per protocol: :mod:`.classification` (linear probe / fine-tuning over label fractions and seeds),
  :mod:`.zero_shot` (positive/negative prompt sets), :mod:`.retrieval` (image <-> report R@K),
  :mod:`.segmentation` (a MONAI decoder on the encoder, Dice), :mod:`.generation` (a report decoder against
  nearest-report retrieval, BLEU / ROUGE-L);
- :mod:`.table`: the comparison table (markdown + JSON);
- :mod:`.evaluators`: zero-shot and retrieval as config evaluators (``benchx_zero_shot``, ``benchx_retrieval``), so
  ``alignkit eval`` scores a checkpoint or a model folder (imported released weights) the BenchX way;
- :mod:`.run`: :func:`~.run.run_benchx` (every protocol, several methods, one table) and ``alignkit bench xray``.

Imports run one way: the protocols import :mod:`.shared`; :mod:`.run` imports the protocols, :mod:`.shared` and
:mod:`.table`.
"""
