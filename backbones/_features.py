"""The one contract between backbones and heads: which maps a backbone returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and strides of the feature maps a backbone returns, shallow to deep.

    Attributes:
        channels: Channels of each returned map.
        strides: Input pixels per feature pixel of each returned map; non-decreasing.
    """

    channels: tuple[int, ...]
    strides: tuple[int, ...]

    def __post_init__(self) -> None:
        # Coerce lists (e.g. from YAML) so the dataclass stays hashable and comparable.
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if len(self.channels) != len(self.strides):
            raise ValueError(
                f"FeatureInfo needs one stride per channel count, got {len(self.channels)} channel "
                f"counts {self.channels} and {len(self.strides)} strides {self.strides}"
            )
        if not self.channels:
            raise ValueError("FeatureInfo must describe at least one feature map")
        if any(c <= 0 for c in self.channels):
            raise ValueError(f"FeatureInfo channels must be positive, got {self.channels}")
        if any(s <= 0 for s in self.strides):
            raise ValueError(f"FeatureInfo strides must be positive, got {self.strides}")
        if any(b < a for a, b in zip(self.strides, self.strides[1:])):
            raise ValueError(f"FeatureInfo strides must be non-decreasing, got {self.strides}")

    def __len__(self) -> int:
        return len(self.channels)

    def select(self, indices: Sequence[int]) -> FeatureInfo:
        """The info of a subset of the maps, in the given order.

        Args:
            indices: Positions into this info.

        Returns:
            A FeatureInfo with only those maps.
        """
        return FeatureInfo(tuple(self.channels[i] for i in indices), tuple(self.strides[i] for i in indices))

    def index_of_stride(self, stride: int, last: bool = True) -> int:
        """Position of the (last, by default) map with the given stride.

        Args:
            stride: The stride to look for.
            last: Return the deepest such map rather than the shallowest.

        Returns:
            The index into this info.

        Raises:
            ValueError: No map has that stride.
        """
        hits = [i for i, s in enumerate(self.strides) if s == stride]
        if not hits:
            raise ValueError(f"no feature map with stride {stride}; strides are {self.strides}")
        return hits[-1] if last else hits[0]
