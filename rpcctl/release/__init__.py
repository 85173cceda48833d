"""The release: ``rpcctl.toml`` (``config``), the runner behind ``rpcctl start`` with its
boot hooks (``runner``, ``hooks``), and ``rpcctl release init`` (``scaffold``)."""
