"""Tables: reading them (:mod:`.read`) and what their columns are and which one to predict
(:mod:`.schema`). The datasets users upload are :mod:`fnbundle.datasets`.

Key rule: importing this package imports neither pandas nor scikit-learn; the functions
that need them import them (the ``tabular`` extra).
"""
