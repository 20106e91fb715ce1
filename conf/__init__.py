"""The packaged configuration (``catalogfs.conf``): ``base.yaml``, the profiles (``local``,
``cluster``, ``gpu_cluster``, ``databricks``), ``log4j2.properties`` and ``taxonomies/``.

Data only; read with :func:`importlib.resources.files` (see :mod:`catalogfs.resources`).
"""
