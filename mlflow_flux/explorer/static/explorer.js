/* mlflow-flux neuron explorer. Part of mlflow-flux (Apache-2.0); no third-party code.
 *
 * The page carries its data (see mlflow_flux/explorer/encoding.py): JSON metadata in #flux-meta and one zlib-compressed,
 * base64 buffer in #flux-data, decoded here with the browser's DecompressionStream. Nothing is fetched: MLflow's
 * artifact viewer runs this in a sandboxed iframe with a null origin, and a cluster may have no internet.
 *
 * window.fluxExplorer is a small read-only view of what is drawn, for tests and for a user in the console:
 *   runs, quantities, layers(run), state, series(run, layer, neuron), selected, drawn, select({...}), cellCenter(row,
 *   bin), timings, errors, ready (a promise).
 */
(function () {
  "use strict";

  var START = performance.now();
  var meta = JSON.parse(document.getElementById("flux-meta").textContent);
  var errors = [];
  window.addEventListener("error", function (event) { errors.push(String(event.message || event)); });
  window.addEventListener("unhandledrejection", function (event) { errors.push(String(event.reason)); });

  var NO_WINDOW = 0, PARTICIPATING = 1, FROZEN = 2, DEAD = 3;
  var STATE_COLOURS = ["#d9d9d9", "#2e8b57", "#e0a526", "#c0392b"];
  var STATE_RGB = STATE_COLOURS.map(function (c) {
    return [parseInt(c.slice(1, 3), 16), parseInt(c.slice(3, 5), 16), parseInt(c.slice(5, 7), 16)];
  });
  var NAN_COLOUR = [236, 236, 236];
  var NONPOSITIVE_COLOUR = [70, 70, 70];
  var NEVER = 2147483647;

  // -- data ---------------------------------------------------------------------------------------------------------

  var buffer = null;
  var cache = {};

  function decode(text) {
    var binary = atob(text.trim());
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Response(stream).arrayBuffer();
  }

  function array(name) {
    if (cache[name]) return cache[name];
    var entry = meta.manifest[name];
    if (!entry) throw new Error("no array " + name + " in the page");
    var count = entry.shape.reduce(function (a, b) { return a * b; }, 1);
    var out;
    if (entry.dtype === "bf16") {
      var bits = new Uint16Array(buffer, entry.offset, count);
      var words = new Uint32Array(count);
      for (var i = 0; i < count; i++) words[i] = bits[i] << 16;
      out = new Float32Array(words.buffer);
    } else if (entry.dtype === "u8") {
      out = new Uint8Array(buffer, entry.offset, count);
    } else if (entry.dtype === "i32") {
      out = new Int32Array(buffer, entry.offset, count);
    } else {
      out = new Float32Array(buffer, entry.offset, count);
    }
    out.shape = entry.shape;
    cache[name] = out;
    return out;
  }

  // -- helpers ------------------------------------------------------------------------------------------------------

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else if (key.slice(0, 2) === "on") node.addEventListener(key.slice(2), attrs[key]);
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function fmt(value) {
    if (value === null || value === undefined || Number.isNaN(value)) return "not defined";
    if (!Number.isFinite(value)) return value > 0 ? "inf" : "-inf";
    if (value === 0) return "0";
    var magnitude = Math.abs(value);
    return magnitude >= 1e4 || magnitude < 1e-3 ? value.toExponential(3) : value.toPrecision(4);
  }

  // Viridis (matplotlib's, public domain): 9 stops, interpolated.
  var VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129],
                 [92, 200, 99], [170, 220, 50], [253, 231, 37]];

  function viridis(t) {
    t = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
    var i = Math.min(VIRIDIS.length - 2, Math.floor(t)), f = t - i, a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
  }

  function hex(rgb) {
    return "#" + rgb.map(function (c) { return Math.round(c).toString(16).padStart(2, "0"); }).join("");
  }

  // A colour scale: [low, high] on a linear or log axis; values outside are clipped, NaN and (on log) <= 0 apart.
  function Scale(low, high, log) {
    this.low = low; this.high = high; this.log = log;
  }
  Scale.prototype.position = function (value) {
    if (this.log) {
      var a = Math.log10(this.low), b = Math.log10(this.high);
      return b > a ? (Math.log10(value) - a) / (b - a) : 0.5;
    }
    return this.high > this.low ? (value - this.low) / (this.high - this.low) : 0.5;
  };
  Scale.prototype.colour = function (value) {
    if (Number.isNaN(value)) return NAN_COLOUR;
    if (this.log && value <= 0) return NONPOSITIVE_COLOUR;
    return viridis(this.position(value));
  };

  function scaleFor(ranges) {
    // ranges: [low, high, positiveLow, log] of each run's layer and quantity: one scale over all of them
    var log = ranges.every(function (r) { return r[3]; }) && ranges.length > 0;
    var low = Infinity, high = -Infinity;
    ranges.forEach(function (r) {
      var lo = log ? r[2] : r[0];
      if (Number.isFinite(lo)) low = Math.min(low, lo);
      if (Number.isFinite(r[1])) high = Math.max(high, r[1]);
    });
    if (!Number.isFinite(low) || !Number.isFinite(high)) { low = 0; high = 1; log = false; }
    return new Scale(low, high, log);
  }

  // -- state of the page ----------------------------------------------------------------------------------------------

  var view = {run: 0, layer: 0, quantity: meta.quantities[0].name, order: "index", from: null, to: null,
              neuron: null, overviewState: PARTICIPATING};
  var selected = null;
  var drawn = {};
  var dom = {};

  function run() { return meta.runs[view.run]; }
  function layer() { return run().layers[Math.min(view.layer, run().layers.length - 1)]; }

  function binEpochs(r) {
    return {first: array(r.bins.first), last: array(r.bins.last)};
  }

  function epochRange() {
    var r = run(), epochs = array(r.epochs);
    var from = view.from === null ? epochs[0] : view.from, to = view.to === null ? epochs[epochs.length - 1] : view.to;
    return [from, to];
  }

  // The bins of run r that overlap the chosen epoch range.
  function visibleBins(r) {
    var bins = binEpochs(r), range = epochRange(), out = [];
    for (var b = 0; b < bins.first.length; b++) if (bins.last[b] >= range[0] && bins.first[b] <= range[1]) out.push(b);
    return out;
  }

  // Row order of a layer: by index, by the chosen quantity's last visible value, by when neurons stop participating
  // or die (never: last).
  function order(r, L, bins) {
    var rows = array(L.rows).length, idx = [];
    for (var i = 0; i < rows; i++) idx.push(i);
    if (view.order === "index") return idx;
    var key;
    if (view.order === "final") {
      var values = L.values[view.quantity] ? array(L.values[view.quantity]) : null;
      var last = bins.length ? bins[bins.length - 1] : 0;
      key = function (i) {
        if (view.quantity === "state") return array(L.states)[last * rows + i];
        var v = values ? values[last * rows + i] : NaN;
        return Number.isNaN(v) ? -Infinity : v;
      };
      return idx.sort(function (a, b) { return key(b) - key(a) || a - b; });
    }
    var when = array(view.order === "stops" ? L.stops : L.dies);
    return idx.sort(function (a, b) { return when[a] - when[b] || a - b; });
  }

  // -- drawing: line charts ---------------------------------------------------------------------------------------

  function prepare(canvas, width, height) {
    var ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio);
    canvas.style.width = width + "px"; canvas.style.height = height + "px";
    var ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";
    return ctx;
  }

  // series: [{x: Float32Array|[], y: [], colour, dash, band: {low, high}}]; axes: {x: [a, b], y: [a, b], logY}
  function lineChart(canvas, width, height, series, axes, labels) {
    var ctx = prepare(canvas, width, height), pad = {l: 44, r: 44, t: 8, b: 20};
    var w = width - pad.l - pad.r, h = height - pad.t - pad.b;
    var x0 = axes.x[0], x1 = axes.x[1] > axes.x[0] ? axes.x[1] : axes.x[0] + 1;
    function sx(x) { return pad.l + (x - x0) / (x1 - x0) * w; }
    function syFor(a) {
      return function (y) {
        if (a.log) { var l0 = Math.log10(a.range[0]), l1 = Math.log10(a.range[1]); return pad.t + h - (Math.log10(y) - l0) / (l1 - l0 || 1) * h; }
        return pad.t + h - (y - a.range[0]) / ((a.range[1] - a.range[0]) || 1) * h;
      };
    }
    ctx.strokeStyle = "#999"; ctx.strokeRect(pad.l, pad.t, w, h);
    ctx.fillStyle = "#444";
    ctx.fillText(String(Math.round(x0)), pad.l, height - 6);
    ctx.textAlign = "right"; ctx.fillText(String(Math.round(x1)), pad.l + w, height - 6); ctx.textAlign = "left";
    (axes.y || []).forEach(function (a, side) {
      var sy = syFor(a), x = side ? pad.l + w + 3 : 3;
      ctx.fillStyle = a.colour || "#444";
      ctx.fillText(fmt(a.range[1]), x, pad.t + 9);
      ctx.fillText(fmt(a.range[0]), x, pad.t + h);
      a.sy = sy;
    });
    series.forEach(function (s) {
      var sy = axes.y[s.axis || 0].sy;
      if (s.band) {
        ctx.fillStyle = s.colour; ctx.globalAlpha = 0.18; ctx.beginPath();
        var started = false;
        for (var i = 0; i < s.x.length; i++) {
          if (!Number.isFinite(s.band.high[i]) || s.x[i] < x0 || s.x[i] > x1) continue;
          if (!started) { ctx.moveTo(sx(s.x[i]), sy(s.band.high[i])); started = true; } else ctx.lineTo(sx(s.x[i]), sy(s.band.high[i]));
        }
        for (var j = s.x.length - 1; j >= 0; j--) {
          if (!Number.isFinite(s.band.low[j]) || s.x[j] < x0 || s.x[j] > x1) continue;
          ctx.lineTo(sx(s.x[j]), sy(s.band.low[j]));
        }
        if (started) ctx.fill();
        ctx.globalAlpha = 1;
      }
      ctx.strokeStyle = s.colour; ctx.lineWidth = s.width || 1.4; ctx.setLineDash(s.dash || []);
      ctx.beginPath();
      var pen = false;
      for (var k = 0; k < s.x.length; k++) {
        var y = s.y[k];
        if (!Number.isFinite(y) || s.x[k] < x0 || s.x[k] > x1 || (axes.y[s.axis || 0].log && y <= 0)) { pen = false; continue; }
        if (pen) ctx.lineTo(sx(s.x[k]), sy(y)); else { ctx.moveTo(sx(s.x[k]), sy(y)); pen = true; }
      }
      ctx.stroke(); ctx.setLineDash([]);
    });
    (axes.marks || []).forEach(function (m) {
      if (m.x < x0 || m.x > x1) return;
      ctx.strokeStyle = m.colour; ctx.setLineDash([3, 2]); ctx.beginPath();
      ctx.moveTo(sx(m.x), pad.t); ctx.lineTo(sx(m.x), pad.t + h); ctx.stroke(); ctx.setLineDash([]);
    });
    if (labels) {
      var lx = pad.l + 6;
      labels.forEach(function (label) {
        ctx.fillStyle = label.colour; ctx.fillRect(lx, pad.t + 4, 10, 3);
        ctx.fillStyle = "#333"; ctx.fillText(label.text, lx + 13, pad.t + 10);
        lx += ctx.measureText(label.text).width + 26;
      });
    }
    return {x: function (px) { return x0 + (px - pad.l) / w * (x1 - x0); }, pad: pad, w: w};
  }

  function range(values, log) {
    var lo = Infinity, hi = -Infinity;
    for (var i = 0; i < values.length; i++) {
      var v = values[i];
      if (!Number.isFinite(v) || (log && v <= 0)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (!Number.isFinite(lo)) return log ? [1e-3, 1] : [0, 1];
    if (hi === lo) { hi = log ? lo * 10 : lo + 1; lo = log ? lo / 10 : lo - 1; }
    return [lo, hi];
  }

  // -- the overview -----------------------------------------------------------------------------------------------

  function drawOverview() {
    var r = run(), epochs = array(r.epochs), all = array(r.fractions), n = epochs.length;
    var shares = [[], [], []];
    for (var i = 0; i < n; i++) for (var s = 0; s < 3; s++) shares[s].push(all[i * 3 + s]);
    var series = [
      {x: epochs, y: shares[0], colour: STATE_COLOURS[PARTICIPATING]},
      {x: epochs, y: shares[1], colour: STATE_COLOURS[FROZEN]},
      {x: epochs, y: shares[2], colour: STATE_COLOURS[DEAD]},
    ];
    var labels = [{text: "participating", colour: STATE_COLOURS[1]}, {text: "frozen", colour: STATE_COLOURS[2]},
                  {text: "dead", colour: STATE_COLOURS[3]}];
    var axes = {x: epochRange(), y: [{range: [0, 1]}]};
    if (r.loss.length) {
      var loss = r.loss[0], steps = array(loss.steps), values = array(loss.values);
      axes.y.push({range: range(values, true), log: true, colour: "#1f5fa8"});
      series.push({x: steps, y: values, colour: "#1f5fa8", axis: 1});
      labels.push({text: loss.key, colour: "#1f5fa8"});
    }
    var chart = lineChart(dom.overview, dom.overview.parentNode.clientWidth - 4, 170, series, axes, labels);
    dom.overview.chart = chart;
    drawLayerStrip();
  }

  function drawLayerStrip() {
    var r = run(), layers = r.layers, epochs = array(r.epochs), range_ = epochRange();
    var width = dom.strip.parentNode.clientWidth - 4, rowHeight = 14, labelWidth = 140;
    var ctx = prepare(dom.strip, width, layers.length * rowHeight + 4);
    var cells = width - labelWidth, visible = [];
    for (var i = 0; i < epochs.length; i++) if (epochs[i] >= range_[0] && epochs[i] <= range_[1]) visible.push(i);
    var state = view.overviewState - 1;
    layers.forEach(function (L, row) {
      var f = array(L.fractions);
      ctx.fillStyle = "#333"; ctx.fillText(L.name + (L.subset ? " (subset)" : ""), 2, row * rowHeight + 11);
      for (var c = 0; c < cells && visible.length; c++) {
        var k = visible[Math.min(visible.length - 1, Math.floor(c / cells * visible.length))];
        var v = f[k * 3 + state];
        ctx.fillStyle = Number.isFinite(v) ? hex(viridis(v)) : hex(NAN_COLOUR);
        ctx.fillRect(labelWidth + c, row * rowHeight + 1, 1, rowHeight - 2);
      }
    });
  }

  // -- the heatmap --------------------------------------------------------------------------------------------------

  function layerScale(r, L, q) {
    return scaleFor([L.ranges[q]]);
  }

  function paint(ctx, r, L, q, bins, rows, scale, x, y, w, h) {
    var count = array(L.rows).length;
    var image = ctx.createImageData(Math.max(1, bins.length), Math.max(1, rows.length));
    var data = image.data, states = array(L.states), values = q === "state" ? null : array(L.values[q]);
    for (var j = 0; j < rows.length; j++) {
      for (var b = 0; b < bins.length; b++) {
        var index = bins[b] * count + rows[j], rgb;
        rgb = values ? scale.colour(values[index]) : STATE_RGB[states[index]];
        var p = (j * bins.length + b) * 4;
        data[p] = rgb[0]; data[p + 1] = rgb[1]; data[p + 2] = rgb[2]; data[p + 3] = 255;
      }
    }
    var off = document.createElement("canvas");
    off.width = image.width; off.height = image.height;
    off.getContext("2d").putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, x, y, w, h);
  }

  function drawHeatmap() {
    var r = run(), L = layer(), q = view.quantity, bins = visibleBins(r), rows = order(r, L, bins);
    var width = dom.heat.parentNode.clientWidth - 4;
    var rowHeight = Math.max(1, Math.min(6, Math.floor(520 / Math.max(1, rows.length))));
    var height = Math.max(60, rows.length * rowHeight);
    var ctx = prepare(dom.heat, width, height);
    var scale = q === "state" ? null : layerScale(r, L, q);
    paint(ctx, r, L, q, bins, rows, scale, 0, 0, width, rows.length * rowHeight);
    drawn = {run: r.id, layer: L.name, quantity: q, order: view.order, rows: rows.slice(), bins: bins.slice(),
             width: width, rowHeight: rowHeight, scale: scale ? {low: scale.low, high: scale.high, log: scale.log} : null,
             at: performance.now()};
    if (api.timings.firstHeatmap === null) api.timings.firstHeatmap = performance.now();
    legend(dom.legend, scale);
    dom.heatTitle.textContent = L.name + " \u00b7 " + (q === "state" ? "state per window" : q) + " \u00b7 " +
      rows.length + (L.banded ? " extreme neurons of " + L.width : " of " + L.width + " neurons") +
      " \u00b7 " + bins.length + " of " + array(r.bins.first).length + " bins";
  }

  function legend(canvas, scale) {
    var width = Math.min(420, canvas.parentNode.clientWidth - 4), ctx = prepare(canvas, width, 34);
    if (!scale) {
      var x = 4;
      meta.states.forEach(function (name, s) {
        ctx.fillStyle = STATE_COLOURS[s]; ctx.fillRect(x, 6, 12, 12);
        ctx.fillStyle = "#333"; ctx.fillText(name, x + 16, 16); x += ctx.measureText(name).width + 30;
      });
      return;
    }
    var bar = width - 150;
    for (var i = 0; i < bar; i++) { ctx.fillStyle = hex(viridis(i / (bar - 1))); ctx.fillRect(4 + i, 4, 1, 12); }
    ctx.fillStyle = "#333";
    ctx.fillText(fmt(scale.low), 4, 30);
    ctx.textAlign = "right"; ctx.fillText(fmt(scale.high) + (scale.log ? " (log)" : ""), 4 + bar, 30);
    ctx.textAlign = "left";
    ctx.fillStyle = hex(NAN_COLOUR); ctx.fillRect(bar + 12, 4, 12, 12);
    ctx.fillStyle = "#333"; ctx.fillText("not defined", bar + 28, 14);
    if (scale.log) { ctx.fillStyle = hex(NONPOSITIVE_COLOUR); ctx.fillRect(bar + 12, 19, 12, 12); ctx.fillStyle = "#333"; ctx.fillText("\u2264 0", bar + 28, 29); }
  }

  function cellAt(event) {
    var rect = dom.heat.getBoundingClientRect(), d = drawn;
    var x = event.clientX - rect.left, y = event.clientY - rect.top;
    var row = Math.floor(y / d.rowHeight), bin = Math.floor(x / d.width * d.bins.length);
    if (row < 0 || row >= d.rows.length || bin < 0 || bin >= d.bins.length) return null;
    return {row: d.rows[row], bin: d.bins[bin]};
  }

  function rowLabel(L, row) {
    var neuron = array(L.rows)[row];
    return neuron < 0 ? "quantile " + meta.bands[-neuron - 1] + " of " + L.width + " neurons" : "neuron " + neuron;
  }

  function describeCell(cell) {
    var r = run(), L = layer(), bins = binEpochs(r), n = array(L.rows).length, q = view.quantity;
    var first = bins.first[cell.bin], last = bins.last[cell.bin];
    var snapshot = first === last ? "epoch " + first : "epochs " + first + "\u2013" + last + " (mean)";
    var value = q === "state" ? meta.states[array(L.states)[cell.bin * n + cell.row]] :
      fmt(array(L.values[q])[cell.bin * n + cell.row]);
    return L.name + " \u00b7 " + rowLabel(L, cell.row) + " \u00b7 " + snapshot + " \u00b7 " +
      (q === "state" ? "state at epoch " + last : q) + ": " + value;
  }

  // -- one neuron ---------------------------------------------------------------------------------------------------

  function series(runIndex, layerName, neuron) {
    var r = meta.runs[runIndex], L = r.layers.filter(function (l) { return l.name === layerName; })[0];
    if (!L) return null;
    var rows = array(L.rows), row = rows.indexOf(neuron);
    if (row < 0) return null;
    var bins = binEpochs(r), n = rows.length, out = {run: r.id, layer: layerName, neuron: neuron,
      first: Array.from(bins.first), last: Array.from(bins.last), values: {}, states: []};
    Object.keys(L.values).forEach(function (q) {
      var v = array(L.values[q]), column = [];
      for (var b = 0; b < bins.first.length; b++) column.push(v[b * n + row]);
      out.values[q] = column;
    });
    var s = array(L.states);
    for (var b = 0; b < bins.first.length; b++) out.states.push(meta.states[s[b * n + row]]);
    return out;
  }

  function drawNeuron() {
    var panel = dom.neuron;
    panel.textContent = "";
    if (view.neuron === null) {
      panel.appendChild(el("p", {class: "hint", text: "Click a cell of the heatmap to see all of that neuron's quantities."}));
      selected = null;
      return;
    }
    var r = run(), L = layer(), data = series(view.run, L.name, view.neuron);
    if (!data) { selected = null; return; }
    selected = data;
    var changes = [];
    for (var b = 1; b < data.states.length; b++) if (data.states[b] !== data.states[b - 1])
      changes.push({x: data.last[b], colour: STATE_COLOURS[meta.states.indexOf(data.states[b])], text: data.states[b - 1] + " \u2192 " + data.states[b] + " by epoch " + data.last[b]});
    panel.appendChild(el("h3", {text: "Neuron " + view.neuron + " of " + L.name + " (" + r.name + ")"}));
    panel.appendChild(el("p", {class: "changes", text: changes.length ? "State changes: " +
      changes.map(function (c) { return c.text; }).join("; ") : "State: " + (data.states[data.states.length - 1] || "") + " throughout"}));
    var grid = el("div", {class: "minis"});
    panel.appendChild(grid);
    var table = el("table", {class: "values"});
    var lastBin = data.last.length - 1;
    meta.quantities.forEach(function (q) {
      if (!data.values[q.name]) return;
      var box = el("div", {class: "mini"}), canvas = el("canvas");
      box.appendChild(el("div", {class: "mini-title", text: q.name}));
      box.appendChild(canvas);
      grid.appendChild(box);
      var logged = L.ranges[q.name] && L.ranges[q.name][3];
      lineChart(canvas, 250, 90, [{x: data.last, y: data.values[q.name], colour: "#1f5fa8"}],
                {x: epochRange(), y: [{range: range(data.values[q.name], logged), log: logged}], marks: changes});
      table.appendChild(el("tr", {}, [el("th", {text: q.name}), el("td", {class: "value", "data-quantity": q.name,
        text: fmt(data.values[q.name][lastBin])})]));
    });
    panel.appendChild(el("p", {class: "hint", text: "Values at the last bin (epoch " + data.last[lastBin] + "):"}));
    panel.appendChild(table);
  }

  // -- all runs ----------------------------------------------------------------------------------------------------

  function drawRuns() {
    if (meta.runs.length < 2) return;
    var name = layer().name, q = view.quantity, container = dom.runs;
    container.textContent = "";
    var ranges = [];
    meta.runs.forEach(function (r) {
      r.layers.forEach(function (L) { if (L.name === name && q !== "state") ranges.push(L.ranges[q]); });
    });
    var scale = q === "state" ? null : scaleFor(ranges);
    legend(dom.runsLegend, scale);
    meta.groups.forEach(function (group) {
      var box = el("div", {class: "group"});
      box.appendChild(el("h4", {text: group.name}));
      group.runs.forEach(function (index) {
        var r = meta.runs[index], L = r.layers.filter(function (l) { return l.name === name; })[0];
        var cell = el("div", {class: "run-cell"});
        cell.appendChild(el("div", {class: "run-name", text: r.name}));
        var canvas = el("canvas", {title: "show this run above", onclick: function () { setView({run: index}); }});
        cell.appendChild(canvas);
        box.appendChild(cell);
        if (!L) { cell.appendChild(el("p", {class: "hint", text: "no layer " + name})); return; }
        var bins = visibleBins(r), rows = order(r, L, bins);
        var h = Math.max(40, Math.min(160, rows.length)), ctx = prepare(canvas, 220, h);
        paint(ctx, r, L, q, bins, rows, scale, 0, 0, 220, h);
      });
      container.appendChild(box);
    });
    drawGroupCurves();
  }

  function drawGroupCurves() {
    // Every group's participating (solid), frozen (dashed) and dead (dotted) fractions, each with its 95% interval.
    var palette = ["#1f5fa8", "#c0392b", "#2e8b57", "#8e44ad", "#e0a526", "#16a085", "#7f8c8d", "#d35400"];
    var dashes = [[], [6, 3], [2, 3]], series = [], labels = [];
    meta.groups.forEach(function (group, g) {
      if (!group.curves) return;
      var c = group.curves, x = array(c.epochs), mean = array(c.mean), low = array(c.low), high = array(c.high);
      var k = x.length, colour = palette[g % palette.length];
      var pick = function (a, s) { var out = []; for (var i = 0; i < k; i++) out.push(a[i * 3 + s]); return out; };
      for (var s = 0; s < 3; s++)
        series.push({x: x, y: pick(mean, s), colour: colour, dash: dashes[s], band: {low: pick(low, s), high: pick(high, s)}});
      labels.push({text: group.name + " (" + group.runs.length + ")", colour: colour});
    });
    labels.push({text: "\u2014 participating, - - frozen, \u00b7\u00b7 dead", colour: "#333"});
    lineChart(dom.groupCurves, dom.groupCurves.parentNode.clientWidth - 4, 220, series,
              {x: epochRange(), y: [{range: [0, 1]}]}, labels);
  }

  // -- controls and events ---------------------------------------------------------------------------------------

  function option(value, text, chosen) {
    var node = el("option", {value: value, text: text});
    if (chosen) node.selected = true;
    return node;
  }

  function controls() {
    var bar = dom.controls;
    bar.textContent = "";
    function select(label, options, onchange) {
      var s = el("select", {onchange: function (event) { onchange(event.target.value); }}, options);
      bar.appendChild(el("label", {}, [document.createTextNode(label + " "), s]));
      return s;
    }
    if (meta.runs.length > 1) select("run", meta.runs.map(function (r, i) { return option(i, r.name, i === view.run); }),
      function (v) { setView({run: +v, neuron: null}); });
    select("layer", run().layers.map(function (L, i) { return option(i, L.name + " (" + L.width + ")", i === view.layer); }),
      function (v) { setView({layer: +v, neuron: null}); });
    select("quantity", meta.quantities.map(function (q) { return option(q.name, q.name, q.name === view.quantity); })
      .concat([option("state", "state per window", view.quantity === "state")]), function (v) { setView({quantity: v}); });
    select("order", [option("index", "by index", view.order === "index"), option("final", "by last value", view.order === "final"),
      option("stops", "by when it stops participating", view.order === "stops"), option("dies", "by when it dies", view.order === "dies")],
      function (v) { setView({order: v}); });
    select("overview", [option(1, "participating", view.overviewState === 1), option(2, "frozen", view.overviewState === 2),
      option(3, "dead", view.overviewState === 3)], function (v) { setView({overviewState: +v}); });
    var range_ = epochRange(), epochs = array(run().epochs);
    var from = el("input", {type: "number", value: range_[0], min: epochs[0], max: epochs[epochs.length - 1], class: "epoch"});
    var to = el("input", {type: "number", value: range_[1], min: epochs[0], max: epochs[epochs.length - 1], class: "epoch"});
    function apply() { setView({from: +from.value, to: +to.value}); }
    from.addEventListener("change", apply); to.addEventListener("change", apply);
    bar.appendChild(el("label", {}, [document.createTextNode("epochs "), from, document.createTextNode(" to "), to]));
    bar.appendChild(el("button", {text: "all epochs", onclick: function () { setView({from: null, to: null}); }}));
  }

  function setView(changes) {
    Object.keys(changes).forEach(function (key) { view[key] = changes[key]; });
    if (view.from !== null && view.to !== null && view.from > view.to) { var t = view.from; view.from = view.to; view.to = t; }
    render();
  }

  function render() {
    controls();
    drawOverview();
    drawHeatmap();
    drawNeuron();
    drawRuns();
  }

  function brush(canvas) {
    var start = null;
    canvas.addEventListener("mousedown", function (event) { start = event.offsetX; });
    canvas.addEventListener("mouseup", function (event) {
      if (start === null || !canvas.chart) return;
      var a = canvas.chart.x(Math.min(start, event.offsetX)), b = canvas.chart.x(Math.max(start, event.offsetX));
      start = null;
      if (b - a >= 1) setView({from: Math.round(a), to: Math.round(b)});
    });
  }

  function layout() {
    var app = document.getElementById("app");
    var header = el("header", {}, [
      el("h1", {text: meta.title}),
      el("p", {class: "what", text: meta.subtitle}),
      el("p", {class: "pooled", text: meta.pooled}),
      el("p", {class: "resolution", text: meta.resolution}),
    ]);
    dom.controls = el("div", {class: "controls"});
    dom.overview = el("canvas", {class: "overview"});
    dom.strip = el("canvas", {class: "strip"});
    dom.heatTitle = el("h2");
    dom.heat = el("canvas", {class: "heatmap"});
    dom.legend = el("canvas", {class: "legend"});
    dom.tip = el("div", {class: "tip", hidden: "hidden"});
    dom.neuron = el("section", {class: "neuron"});
    var sections = [header, dom.controls,
      el("section", {}, [el("h2", {text: "Overview: loss, and the network's participating, frozen and dead neurons (drag to zoom)"}), dom.overview,
                         el("h3", {text: "Per layer (the state chosen in 'overview', 0 to 1)"}), dom.strip]),
      el("section", {}, [dom.heatTitle, dom.legend, dom.heat, dom.tip]), dom.neuron];
    if (meta.runs.length > 1) {
      dom.runs = el("div", {class: "runs"});
      dom.runsLegend = el("canvas", {class: "legend"});
      dom.groupCurves = el("canvas", {class: "overview"});
      sections.push(el("section", {}, [el("h2", {text: "All runs: the chosen layer and quantity, one colour scale, grouped as the report groups them"}),
        dom.runsLegend, dom.runs, el("h3", {text: "Groups: participating, frozen and dead fractions over epochs, mean and 95% interval over each group's runs"}),
        dom.groupCurves]));
    }
    sections.forEach(function (s) { app.appendChild(s); });
    brush(dom.overview);
    dom.heat.addEventListener("mousemove", function (event) {
      var cell = cellAt(event);
      if (!cell) { dom.tip.hidden = true; return; }
      dom.tip.hidden = false;
      dom.tip.textContent = describeCell(cell);
      dom.tip.style.left = (event.pageX + 12) + "px"; dom.tip.style.top = (event.pageY + 12) + "px";
    });
    dom.heat.addEventListener("mouseleave", function () { dom.tip.hidden = true; });
    dom.heat.addEventListener("click", function (event) {
      var cell = cellAt(event);
      if (cell && array(layer().rows)[cell.row] >= 0) setView({neuron: array(layer().rows)[cell.row]});
    });
    window.addEventListener("resize", function () { if (buffer) render(); });
  }

  var api = window.fluxExplorer = {
    version: meta.version,
    runs: meta.runs.map(function (r) { return {id: r.id, name: r.name, group: r.group}; }),
    quantities: meta.quantities.map(function (q) { return q.name; }),
    resolution: meta.resolution,
    pooled: meta.pooled,
    layers: function (runIndex) { return meta.runs[runIndex || 0].layers.map(function (L) { return L.name; }); },
    series: function (runIndex, layerName, neuron) { return series(runIndex, layerName, neuron); },
    select: function (changes) { setView(changes); return api.state; },
    // Where the heatmap draws row `row` (a position in the layer's rows) at bin `bin`, in the canvas's own pixels.
    cellOffset: function (row, bin) {
      var d = drawn, position = d.rows.indexOf(row), column = d.bins.indexOf(bin);
      if (position < 0 || column < 0) return null;
      return {x: (column + 0.5) * d.width / d.bins.length, y: (position + 0.5) * d.rowHeight};
    },
    timings: {start: START, decoded: null, firstHeatmap: null},
    errors: errors,
  };
  Object.defineProperty(api, "state", {get: function () { return Object.assign({}, view); }});
  Object.defineProperty(api, "selected", {get: function () { return selected; }});
  Object.defineProperty(api, "drawn", {get: function () { return drawn; }});

  api.ready = decode(document.getElementById("flux-data").textContent).then(function (data) {
    buffer = data;
    api.timings.decoded = performance.now();
    layout();
    render();
    document.body.setAttribute("data-ready", "true");
    return true;
  }).catch(function (error) {
    errors.push(String(error));
    document.getElementById("app").textContent = "This page could not be drawn: " + error;
    throw error;
  });
})();
