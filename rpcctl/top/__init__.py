"""``rpcctl top``: a live view of a node or a fleet.

``model`` polls the nodes (no Textual); ``app`` draws them with Textual, the optional extra
``rpcctl[top]``; ``columns`` says what each column shows and which drop first.
"""
