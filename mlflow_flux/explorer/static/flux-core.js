/* mlflow-flux explorer: the pure functions (no page, no DOM). Part of mlflow-flux (Apache-2.0); no third-party code.
 *
 * The page inlines this file before explorer.js, which reads it as the global FluxCore; `node --test` loads the same
 * file with require() (tests/explorer/js/). Every function takes its data as arguments and returns a value.
 */
"use strict";

const FluxCore = (() => {
  // -- numbers and colours ----------------------------------------------------------------------------------------

  /** bfloat16 bits (a Uint16Array) as float32 values: the upper 16 bits of each float32 (docs: explorer/encoding.py). */
  function fromBfloat16(bits) {
    const words = new Uint32Array(bits.length);
    for (let i = 0; i < bits.length; i++) words[i] = bits[i] << 16;
    return new Float32Array(words.buffer);
  }

  /** A number as the page writes it: 4 significant digits, exponent notation far from 1, "not defined" for NaN. */
  function fmt(value) {
    if (value === null || value === undefined || Number.isNaN(value)) return "not defined";
    if (!Number.isFinite(value)) return value > 0 ? "inf" : "-inf";
    if (value === 0) return "0";
    const magnitude = Math.abs(value);
    return magnitude >= 1e4 || magnitude < 1e-3 ? value.toExponential(3) : value.toPrecision(4);
  }

  // Viridis (matplotlib's, public domain): 9 stops, interpolated.
  const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129],
    [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  // A diverging scale for differences: blue (negative), white (0), red (positive).
  const DIVERGING = [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]];

  function interpolate(stops, t) {
    const x = Math.min(1, Math.max(0, t)) * (stops.length - 1);
    const i = Math.min(stops.length - 2, Math.floor(x));
    const f = x - i;
    const a = stops[i];
    const b = stops[i + 1];
    return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
  }

  const viridis = (t) => interpolate(VIRIDIS, t);
  const diverging = (t) => interpolate(DIVERGING, t);

  function hex(rgb) {
    return "#" + rgb.map((c) => Math.round(c).toString(16).padStart(2, "0")).join("");
  }

  const NAN_COLOUR = [236, 236, 236];
  const NONPOSITIVE_COLOUR = [70, 70, 70];

  /**
   * A colour scale over [low, high], linear or log; values outside are clipped; NaN and (on log) values <= 0 get
   * colours of their own. `centred`: a diverging scale symmetric around 0.
   */
  function makeScale(low, high, log, centred = false) {
    const position = (value) => {
      if (log) {
        const a = Math.log10(low);
        const b = Math.log10(high);
        return b > a ? (Math.log10(value) - a) / (b - a) : 0.5;
      }
      return high > low ? (value - low) / (high - low) : 0.5;
    };
    const colour = (value) => {
      if (Number.isNaN(value)) return NAN_COLOUR;
      if (log && value <= 0) return NONPOSITIVE_COLOUR;
      return (centred ? diverging : viridis)(position(value));
    };
    return {low, high, log, centred, position, colour};
  }

  /** One scale over several layers' ranges ([low, high, positiveLow, log] each): log only where all are. */
  function scaleFor(ranges) {
    let log = ranges.length > 0 && ranges.every((r) => r[3]);
    let low = Infinity;
    let high = -Infinity;
    for (const r of ranges) {
      const lo = log ? r[2] : r[0];
      if (Number.isFinite(lo)) low = Math.min(low, lo);
      if (Number.isFinite(r[1])) high = Math.max(high, r[1]);
    }
    if (!Number.isFinite(low) || !Number.isFinite(high)) {
      low = 0;
      high = 1;
      log = false;
    }
    return makeScale(low, high, log);
  }

  /** A diverging scale for differences, symmetric around 0: [-m, m], m the largest |bound| of the ranges. */
  function differenceScale(ranges) {
    let m = 0;
    for (const r of ranges) {
      for (const v of [r[0], r[1]]) if (Number.isFinite(v)) m = Math.max(m, Math.abs(v));
    }
    if (m === 0) m = 1;
    return makeScale(-m, m, false, true);
  }

  /** [low, high] of the finite values (positive ones on a log axis), widened when they are all equal. */
  function valueRange(values, log) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of values) {
      if (!Number.isFinite(v) || (log && v <= 0)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (!Number.isFinite(lo)) return log ? [1e-3, 1] : [0, 1];
    if (hi === lo) return log ? [lo / 10, lo * 10] : [lo - 1, hi + 1];
    return [lo, hi];
  }

  // -- epochs, bins and rows ----------------------------------------------------------------------------------------

  /** The chosen epoch range, [from, to] within the run's epochs, swapped when given backwards; null: the ends. */
  function epochRange(epochs, from, to) {
    const first = epochs[0];
    const last = epochs[epochs.length - 1];
    let a = from === null || from === undefined ? first : from;
    let b = to === null || to === undefined ? last : to;
    if (a > b) [a, b] = [b, a];
    return [Math.max(first, a), Math.min(last, b)];
  }

  /** The indices of the bins (first[i] .. last[i] epochs) that overlap [from, to]. */
  function visibleBins(first, last, from, to) {
    const out = [];
    for (let b = 0; b < first.length; b++) if (last[b] >= from && first[b] <= to) out.push(b);
    return out;
  }

  /** Which bin holds `epoch` (the first whose last epoch reaches it), or -1. */
  function binOf(first, last, epoch) {
    for (let b = 0; b < first.length; b++) if (first[b] <= epoch && epoch <= last[b]) return b;
    return -1;
  }

  /**
   * Row order of a layer's drawn rows: "index"; "final" (the chosen quantity's value at the last visible bin, high
   * first, NaN last); "stops" / "dies" (when a neuron stops participating or dies, never last). Ties keep index order.
   * `data`: {count, values (bins x count, or null for states), states, lastBin, stops, dies, quantity}.
   */
  function rowOrder(kind, data) {
    const idx = Array.from({length: data.count}, (_, i) => i);
    if (kind === "index") return idx;
    if (kind === "final") {
      const at = data.lastBin * data.count;
      const key = (i) => {
        if (data.values === null) return data.states[at + i];
        const v = data.values[at + i];
        return Number.isNaN(v) ? -Infinity : v;
      };
      return idx.sort((a, b) => key(b) - key(a) || a - b);
    }
    const when = kind === "stops" ? data.stops : data.dies;
    return idx.sort((a, b) => when[a] - when[b] || a - b);
  }

  /** The drag of a brush on a chart as an epoch range: the two pixels through `toEpoch`, null if under one epoch. */
  function brushRange(toEpoch, startPx, endPx) {
    const a = toEpoch(Math.min(startPx, endPx));
    const b = toEpoch(Math.max(startPx, endPx));
    return b - a >= 1 ? [Math.round(a), Math.round(b)] : null;
  }

  // -- many layers --------------------------------------------------------------------------------------------------

  /**
   * Layers grouped by their module path: the group is the path up to its last numbered part (a block:
   * "transformer.h.0"), else all but the last part ("encoder"); each layer keeps its full name and its part within
   * the group ("attn.c_attn"), in the model's order.
   */
  function layerGroups(names) {
    const groups = [];
    const byPath = new Map();
    names.forEach((name, index) => {
      const parts = name.split(".");
      let cut = -1;
      for (let i = 0; i < parts.length - 1; i++) if (/^\d+$/.test(parts[i])) cut = i;
      const head = cut >= 0 ? parts.slice(0, cut + 1) : parts.slice(0, -1);
      const path = head.join(".");
      const short = parts.slice(head.length).join(".") || name;
      if (!byPath.has(path)) {
        const group = {path, layers: []};
        byPath.set(path, group);
        groups.push(group);
      }
      byPath.get(path).layers.push({index, name, short});
    });
    return groups;
  }

  /** The layers whose full name holds every word of `text` (case-insensitive); all for an empty filter. */
  function filterLayers(names, text) {
    const words = String(text || "").toLowerCase().split(/\s+/).filter(Boolean);
    const out = [];
    names.forEach((name, index) => {
      const lower = name.toLowerCase();
      if (words.every((w) => lower.includes(w))) out.push(index);
    });
    return out;
  }

  /**
   * When a layer's fraction in one state (column `state` of a snapshots x 3 flat array) first rises: the first
   * snapshot at least `rise` above the first snapshot with a window (its first finite value); -1 when it never does.
   */
  function firstRise(fractions, state, rise) {
    const n = fractions.length / 3;
    let base = NaN;
    for (let i = 0; i < n; i++) {
      const v = fractions[i * 3 + state];
      if (!Number.isFinite(v)) continue;
      if (Number.isNaN(base)) {
        base = v;
        continue;
      }
      if (v >= base + rise - 1e-6) return i;  // the fractions are float32: their rounding is no rise
    }
    return -1;
  }

  /**
   * The overview's order of layers: "model" (as watched), "name", "rise" (by when the dead fraction first rises, never
   * last) or "final" (the last snapshot's fraction in the chosen state, high first). `layers`: [{index, name, rise,
   * final}].
   */
  function sortLayers(kind, layers) {
    const out = layers.slice();
    if (kind === "name") return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    if (kind === "rise") {
      const key = (l) => (l.rise < 0 ? Infinity : l.rise);
      return out.sort((a, b) => key(a) - key(b) || a.index - b.index);
    }
    if (kind === "final") {
      const key = (l) => (Number.isFinite(l.final) ? l.final : -Infinity);
      return out.sort((a, b) => key(b) - key(a) || a.index - b.index);
    }
    return out.sort((a, b) => a.index - b.index);
  }

  /** Where resets fall on a heatmap: [{bin, row}] for each (epoch, neuron) whose neuron is drawn (row: its position
   * among `rows`, the drawn neuron indices); a layer reset as a whole (neuron -1) marks every row. */
  function resetCells(epochs, neurons, first, last, rows) {
    const position = new Map();
    rows.forEach((neuron, i) => position.set(neuron, i));
    const out = [];
    for (let k = 0; k < epochs.length; k++) {
      const bin = binOf(first, last, epochs[k]);
      if (bin < 0) continue;
      if (neurons[k] < 0) {
        rows.forEach((_, row) => out.push({bin, row}));
      } else if (position.has(neurons[k])) {
        out.push({bin, row: position.get(neurons[k])});
      }
    }
    return out;
  }

  return {
    fromBfloat16, fmt, viridis, diverging, hex, NAN_COLOUR, NONPOSITIVE_COLOUR, makeScale, scaleFor,
    differenceScale, valueRange, epochRange, visibleBins, binOf, rowOrder, brushRange, layerGroups, filterLayers,
    firstRise, sortLayers, resetCells,
  };
})();

if (typeof module === "object" && module.exports) module.exports = FluxCore;
