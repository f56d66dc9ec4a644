"""The model's features: which columns, in which order, and how categories become codes.

One :class:`FeatureSpec` is fitted on a training split and saved with the model
(``feature_spec.json``). Training, evaluation, serving and monitoring all encode through it,
so a row is turned into the same numbers everywhere. Categorical features use XGBoost's
native categorical support: a category becomes its index in the spec's vocabulary (a
``float32`` code, feature type ``"c"``); an unseen category is an error at serving time and
a missing value (NaN) in batch scoring.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

#: Integer-valued numeric features (rejected at serving time if not whole numbers).
INTEGER_FEATURES = frozenset(
    {
        "month",
        "day_of_week",
        "sched_dep_hour",
        "sched_dep_minute",
        "plane_age",
        "plane_seats",
        "plane_engines",
    }
)
#: Numeric features that are never missing in a valid row (the rest may be null: XGBoost
#: learns a default direction for missing values).
REQUIRED_NUMERIC = frozenset({"month", "day_of_week", "sched_dep_hour", "sched_dep_minute", "distance"})


class FeatureError(ValueError):
    """A row cannot be encoded; ``field`` names the offending feature."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class FeatureSpec:
    features: tuple[str, ...]
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    label: str = "is_delayed"

    # -- construction -------------------------------------------------------------------
    @classmethod
    def fit(cls, frame: pd.DataFrame, features: list[str], categorical: list[str], label: str = "is_delayed"):
        """Vocabulary of every categorical feature from a training frame (sorted, stable)."""
        missing = [c for c in [*features, label] if c not in frame.columns]
        if missing:
            raise FeatureError(missing[0], f"column missing from the training data ({', '.join(missing)})")
        categories = {
            column: tuple(sorted(str(v) for v in frame[column].dropna().unique())) for column in categorical
        }
        return cls(tuple(features), categories, label)

    def to_json(self) -> str:
        return json.dumps(
            {
                "features": list(self.features),
                "categories": {k: list(v) for k, v in self.categories.items()},
                "label": self.label,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        raw = json.loads(text)
        return cls(
            tuple(raw["features"]),
            {k: tuple(v) for k, v in raw["categories"].items()},
            raw.get("label", "is_delayed"),
        )

    # -- description ----------------------------------------------------------------------
    @property
    def feature_types(self) -> list[str]:
        """XGBoost feature types: ``"c"`` for categorical, ``"q"`` for numeric."""
        return ["c" if f in self.categories else "q" for f in self.features]

    def is_categorical(self, feature: str) -> bool:
        return feature in self.categories

    # -- encoding -------------------------------------------------------------------------
    def encode_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """A ``float32`` matrix (rows × features) from a dataframe; unknown categories → NaN."""
        import numpy as np
        import pandas as pd

        out = np.empty((len(frame), len(self.features)), dtype=np.float32)
        for j, feature in enumerate(self.features):
            if feature not in frame.columns:
                raise FeatureError(feature, "column missing")
            column = frame[feature]
            if feature in self.categories:
                codes = pd.Categorical(
                    column.astype("string"), categories=list(self.categories[feature])
                ).codes
                out[:, j] = np.where(codes < 0, np.nan, codes)
            else:
                out[:, j] = pd.to_numeric(column, errors="raise").astype("float64").to_numpy(na_value=np.nan)
        return out

    def encode_row(self, row: dict[str, Any]) -> list[float]:
        """One request row to a list of floats, strictly validated (serving path, no pandas).

        Raises :class:`FeatureError` naming the field: missing, unknown category, wrong type,
        NaN/inf, a fractional value for an integer feature, or a null where not allowed.
        """
        values: list[float] = []
        for feature in self.features:
            if feature not in row:
                raise FeatureError(feature, "field required")
            value = row[feature]
            if feature in self.categories:
                if not isinstance(value, str):
                    raise FeatureError(feature, f"expected a string category, got {type(value).__name__}")
                try:
                    values.append(float(self._index(feature)[value]))
                except KeyError:
                    raise FeatureError(feature, f"unknown category {value!r}") from None
                continue
            if value is None:
                if feature in REQUIRED_NUMERIC:
                    raise FeatureError(feature, "must not be null")
                values.append(math.nan)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise FeatureError(feature, f"expected a number, got {type(value).__name__}")
            number = float(value)
            if not math.isfinite(number):
                raise FeatureError(feature, "must be a finite number (NaN and infinity are not allowed)")
            if feature in INTEGER_FEATURES and not number.is_integer():
                raise FeatureError(feature, f"expected a whole number, got {value}")
            values.append(number)
        return values

    def _index(self, feature: str) -> dict[str, int]:
        cache = self.__dict__.setdefault("_index_cache", {})
        if feature not in cache:
            cache[feature] = {v: i for i, v in enumerate(self.categories[feature])}
        return cache[feature]
