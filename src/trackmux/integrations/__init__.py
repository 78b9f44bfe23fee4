"""trackmux's trackers from other training frameworks: :mod:`.transformers` (a callback for
Hugging Face's Trainer) and :mod:`.lightning` (a Lightning logger). Each module needs its
framework, an optional extra: ``pip install 'trackmux[transformers]'`` or
``'trackmux[lightning]'``."""
