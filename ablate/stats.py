"""The one standard-error helper: mean, standard error (sample std / sqrt(n)) and n, for a list, a pandas
Series or a grouped Series. Evaluation, the four directions and the report all read their error bars here."""

import math

import pandas as pd


def mean_se(values) -> tuple[float, float, int]:
    """(mean, standard error, n) of `values`, NaNs dropped; se is NaN below two values."""
    x = pd.Series(values, dtype=float).dropna()
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    return mean, float(x.std() / math.sqrt(n)) if n > 1 else math.nan, n


def grouped_mean_se(grouped) -> pd.DataFrame:
    """Per group of a pandas SeriesGroupBy: columns mean, se, n (the same formula as `mean_se`)."""
    n = grouped.count()
    return pd.DataFrame({"mean": grouped.mean(), "se": (grouped.std() / n.pow(0.5)).where(n > 1), "n": n})


def quadrature(*ses):
    """The standard error of a sum or difference of independent estimates: sqrt(se_1^2 + se_2^2 + ...);
    floats, numpy arrays or pandas Series alike."""
    return sum(se**2 for se in ses) ** 0.5


def difference(a, b) -> tuple[float, float, int]:
    """mean(a) - mean(b) of two independent samples: (estimate, se in quadrature, the smaller n)."""
    (ma, sa, na), (mb, sb, nb) = mean_se(a), mean_se(b)
    return ma - mb, quadrature(sa, sb), min(na, nb)
