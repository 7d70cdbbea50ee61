"""A synthetic echocardiography archive in the EchoNet-Dynamic layout plus a study table (the data of
``alignkit demo echo``): study plans (``plans``), drawn clips (``render``), sectioned reports (``reports``) and
the archive writer (``archive``: :func:`~alignkit.domains.medical.echo.synthetic.archive.write_synthetic_echo`)."""
