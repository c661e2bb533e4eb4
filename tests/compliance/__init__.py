"""The compliance suite: what every source adapter x capture mode and every target adapter must pass."""
