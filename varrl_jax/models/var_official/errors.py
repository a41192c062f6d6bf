"""The one error the official-checkpoint converters raise."""

from __future__ import annotations


class ConversionError(ValueError):
  """A state_dict does not fit the module: a key missing, unexpected or of
  the wrong shape. The message is one line naming the file and the key, e.g.
  ``vae_ch160v4096z32.pth: quant_conv.weight: shape (32, 32, 1, 1), expected
  (32, 32, 3, 3)``; ``source``, ``key`` and ``detail`` stay readable for
  callers that report them their own way.
  """

  def __init__(self, source: str, key: str, message: str):
    super().__init__(f'{source}: {key}: {message}')
    self.source = source
    self.key = key
    self.detail = message
