"""``HistogramObserver``: torch's histogram observer (the histogram kept over a growing range, with
16x upsampling when the range grows, and the L2-norm search over bin ranges for the qparams), plus a
percentile mode; the histogram math is float32 step for step as torch's, so the search lands on the
same bins."""
from __future__ import annotations

import numpy as np

import ember
from ember import dtypes as _dt

from .observer import (_EPS, _PER_TENSOR, UniformQuantizationObserverBase, _check_not_nan, _no_data_error, _observed,
                       _set_buffer, per_tensor_affine)

# ---- histogram math (float32 step for step as torch, so the search lands on the same bins) -----
def _histc(x, bins, lo, hi):
    """torch.histc of float32 ``x``: ``bins`` equal bins over [lo, hi], the last one closed; values
    outside are dropped; an empty range is widened by 1 each side."""
    lo, hi = float(lo), float(hi)
    if lo == hi and x.size:
        lo, hi = float(x.min()), float(x.max())
    if lo == hi:
        lo, hi = lo - 1.0, hi + 1.0
    left, right = np.float32(lo), np.float32(hi)
    x = x[(x >= left) & (x <= right)]
    pos = ((x - left) * np.float32(bins) / (right - left)).astype(np.int64)
    return np.bincount(np.minimum(pos, bins - 1), minlength=bins).astype(np.float32)


def _linspace(start, end, steps):
    """torch.linspace's float32 formula: the first half counts up from ``start``, the second down from
    ``end``. (torch's SIMD path rounds some points differently; that can move 1/16 of an old bin's
    mass to a neighbouring new bin when a histogram is rescaled, not the chosen range in practice.)"""
    start, end = np.float32(start), np.float32(end)
    step = (end - start) / np.float32(steps - 1)
    idx = np.arange(steps, dtype=np.float32)
    half = steps // 2
    return np.concatenate([start + step * idx[:half], end - step * (np.float32(steps - 1) - idx[half:])])


def _rescale_histogram(hist, orig_min, orig_max, new_min, new_max, rate):
    """Spread a histogram over [orig_min, orig_max] onto the same number of bins over the wider
    [new_min, new_max]: each old bin is split into ``rate`` equal parts placed by their mid points."""
    bins = hist.shape[0]
    f = np.float32
    parts = np.repeat(hist, rate) / f(rate)
    width = (f(orig_max) - f(orig_min)) / f(bins * rate)
    mids = _linspace(orig_min, orig_max, bins * rate + 1)[:-1] + f(0.5) * width
    edges = _linspace(new_min, new_max, bins + 1)
    idx = np.clip(np.searchsorted(edges, mids, side="right") - 1, 0, bins - 1)
    out = np.zeros(bins, np.float32)
    np.add.at(out, idx, parts)  # float32 sums in order, as torch.bincount with float weights
    return out


def _cube_diff(begin, end, density):
    """density * integral of x^2 from begin to end: the L2 error of values spread uniformly."""
    return density * ((end * end * end - begin * begin * begin) / np.float32(3))


def _quantization_error(hist, min_val, max_val, start_bin, end_bin, dst_nbins):
    """L2 error of quantizing the histogram to ``dst_nbins`` levels spanning bins [start_bin, end_bin]."""
    bins = hist.shape[0]
    f = np.float32
    bin_width = (float(max_val) - float(min_val)) / bins
    dst_width = bin_width * (end_bin - start_bin + 1) / dst_nbins
    if dst_width == 0.0:
        return 0.0
    bw, dw = f(bin_width), f(dst_width)
    src_begin = np.arange(-start_bin, bins - start_bin, dtype=np.float32) * bw
    src_end = src_begin + bw
    dst_of_begin = np.clip(np.floor_divide(src_begin, dw), 0, dst_nbins - 1).astype(np.float32)
    dst_of_end = np.clip(np.floor_divide(src_end, dw), 0, dst_nbins - 1).astype(np.float32)
    density = hist / bw
    half = f(dst_width / 2)
    norm = _cube_diff(src_begin - (dst_of_begin + f(0.5)) * dw, np.full(bins, half, np.float32), density)
    norm = norm + (dst_of_end - dst_of_begin - f(1)) * _cube_diff(f(-dst_width / 2), half, density)
    norm = norm + _cube_diff(f(-dst_width / 2), src_end - (dst_of_end * dw + half), density)
    return float(np.float32(norm.sum(dtype=np.float64)))


def _l2_search_range(hist, min_val, max_val, dst_nbins):
    """torch's non-linear search: shrink [start_bin, end_bin] from the side holding less mass, in
    steps of 1e-5 of the total, while the L2 quantization error keeps falling."""
    bins = hist.shape[0]
    total = float(np.float32(hist.sum(dtype=np.float64)))
    csum = np.cumsum(hist, dtype=np.float64).astype(np.float32).tolist()
    stepsize, alpha, beta = 1e-5, 0.0, 1.0
    start_bin, end_bin, norm_min = 0, bins - 1, float("inf")
    while alpha < beta:
        next_alpha, next_beta = alpha + stepsize, beta - stepsize
        lo_mass = float(np.float32(next_alpha * total))  # torch compares in float32
        hi_mass = float(np.float32(next_beta * total))
        left, right = start_bin, end_bin
        while left < end_bin and csum[left] < lo_mass:
            left += 1
        while right > start_bin and csum[right] > hi_mass:
            right -= 1
        next_start, next_end = start_bin, end_bin
        if left - start_bin > end_bin - right:
            next_start, alpha = left, next_alpha
        else:
            next_end, beta = right, next_beta
        if next_start == start_bin and next_end == end_bin:
            continue
        norm = _quantization_error(hist, min_val, max_val, next_start, next_end, dst_nbins)
        if norm > norm_min:
            break
        norm_min, start_bin, end_bin = norm, next_start, next_end
    width = (np.float32(max_val) - np.float32(min_val)) / np.float32(bins)
    return min_val + width * np.float32(start_bin), min_val + width * np.float32(end_bin + 1)


def _percentile_range(hist, min_val, max_val, percentile):
    """The (100-p)-th and p-th percentiles of the histogrammed values, interpolating inside a bin."""
    bins = hist.shape[0]
    cdf = np.cumsum(hist, dtype=np.float64)
    width = (float(max_val) - float(min_val)) / bins

    def quantile(mass):
        i = min(int(np.searchsorted(cdf, mass, side="left")), bins - 1)
        below = cdf[i - 1] if i else 0.0
        frac = (mass - below) / hist[i] if hist[i] > 0 else 0.0
        return np.float32(float(min_val) + (i + min(max(frac, 0.0), 1.0)) * width)

    tail = cdf[-1] * (100.0 - percentile) / 100.0
    if tail <= 0:
        return np.float32(min_val), np.float32(max_val)
    return quantile(tail), quantile(cdf[-1] - tail)


# ---- histogram -------------------------------------------------------------------------------
class HistogramObserver(UniformQuantizationObserverBase):
    """A running histogram of the observed values; qparams come from the sub-range of bins that
    minimises the L2 quantization error (torch's search), or, with ``percentile=p``, from the range
    between the (100-p)-th and p-th percentiles (e.g. 99.99 clips the 0.01% extreme values of each tail).

    When a batch widens the range, the old histogram is spread over the new bins by upsampling each
    old bin into 16 equal parts (torch's algorithm), so the result depends on batch order, as torch's.
    """

    def __init__(self, bins=2048, dtype=_dt.uint8, qscheme=per_tensor_affine, reduce_range=False, quant_min=None,
                 quant_max=None, factory_kwargs=None, eps=_EPS, is_dynamic=False, percentile=None, **kwargs):
        who = type(self).__name__
        if qscheme not in _PER_TENSOR:
            raise NotImplementedError(f"{who}: qscheme must be one of {_PER_TENSOR}, got {qscheme!r}")
        if is_dynamic:
            raise NotImplementedError(f"{who} doesn't support dynamic quantization")
        if percentile is not None and not 50 < percentile <= 100:
            raise ValueError(f"{who}: percentile must be in (50, 100], got {percentile}")
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs, eps, is_dynamic,
                         **kwargs)
        self.bins = int(bins)
        self.percentile = percentile
        self.register_buffer("histogram", ember.zeros(self.bins))
        self.register_buffer("min_val", ember.tensor(float("inf")))
        self.register_buffer("max_val", ember.tensor(float("-inf")))
        self.dst_nbins = 2 ** (8 * self.dtype.itemsize)
        self.upsample_rate = 16

    _resizable = ("histogram", "min_val", "max_val")

    def _seen(self):
        return not (self.min_val.item() == float("inf") or self.max_val.item() == float("-inf"))

    def forward(self, x_orig):
        x = _observed(x_orig, type(self).__name__).ravel()
        if x.size == 0:
            return x_orig
        x_min, x_max = x.min(), x.max()
        _check_not_nan(x_min, x_max, x, type(self).__name__)
        if np.isinf(x_min) or np.isinf(x_max):  # torch warns and drops infinities
            x = x[np.abs(x) != np.inf]
            if x.size == 0:
                return x_orig
            x_min, x_max = x.min(), x.max()
        if not self._seen():
            _set_buffer(self, "min_val", x_min)
            _set_buffer(self, "max_val", x_max)
            _set_buffer(self, "histogram", _histc(x, self.bins, x_min, x_max))
            return x_orig
        cur_min, cur_max = self.min_val.numpy()[()], self.max_val.numpy()[()]
        new_min, new_max = min(cur_min, x_min), max(cur_max, x_max)
        update = _histc(x, self.bins, new_min, new_max)
        hist = self.histogram.numpy()
        if new_min == cur_min and new_max == cur_max:
            combined = hist + update
        elif cur_min == cur_max:  # everything seen so far was one value: it is one spike
            combined = _histc(np.asarray([cur_min], np.float32), self.bins, new_min, new_max) * hist.sum() + update
        else:
            combined = update + _rescale_histogram(hist, cur_min, cur_max, new_min, new_max, self.upsample_rate)
        _set_buffer(self, "histogram", combined)
        _set_buffer(self, "min_val", new_min)
        _set_buffer(self, "max_val", new_max)
        return x_orig

    def calculate_qparams(self):
        if not self._seen():
            raise _no_data_error(self)
        hist = self.histogram.numpy()
        if hist.shape[0] != self.bins:
            raise ValueError(f"{type(self).__name__}: the histogram has {hist.shape[0]} bins, the observer was "
                             f"made with bins={self.bins}")
        lo, hi = self.min_val.numpy()[()], self.max_val.numpy()[()]
        if self.percentile is not None:
            new_min, new_max = _percentile_range(hist, lo, hi, self.percentile)
        else:
            new_min, new_max = _l2_search_range(hist, lo, hi, self.dst_nbins)
        return self._calculate_qparams(new_min, new_max)

    def extra_repr(self):
        return f"bins={self.bins}, min_val={self.min_val.item()}, max_val={self.max_val.item()}"


default_histogram_observer = HistogramObserver.with_args(quant_min=0, quant_max=127)
