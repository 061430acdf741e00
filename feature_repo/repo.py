"""Module-level Feast objects for the ``feast`` CLI (``feast -f feature_store.local.yaml plan`` etc.).

Built from the environment's settings; pipelines code uses ``definitions(settings)`` directly instead.
"""

from feature_repo.definitions import definitions
from pipelines.settings import get_settings

_repo = definitions(get_settings())
globals().update({obj.name: obj for obj in _repo.objects})
