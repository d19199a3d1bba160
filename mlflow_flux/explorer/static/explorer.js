/* mlflow-flux neuron explorer: the page. Part of mlflow-flux (Apache-2.0); no third-party code.
 *
 * The page carries its data (mlflow_flux/explorer/encoding.py): JSON metadata in #flux-meta and one zlib-compressed,
 * base64 buffer in #flux-data, decoded with the browser's DecompressionStream. Nothing is fetched: MLflow's artifact
 * viewer runs this in a sandboxed iframe with a null origin, and a cluster may have no internet. The pure functions
 * are in flux-core.js (the global FluxCore), inlined before this file.
 *
 * One state object (`state`) says what is shown; the page's elements are built once (`build`) and every change
 * redraws what depends on it (`update`): a control keeps its focus.
 *
 * window.fluxExplorer, a small read-only view of what is drawn, for tests and for a user in the console:
 *   version, runs, quantities, resolution, pooled, live, pairs, layers(run), series(run, layer, neuron),
 *   pairSeries(pair, layer, neuron), select(changes), cellCenter(row, bin), state, selected, drawn, overview,
 *   timings, errors, ready (a promise).
 */
"use strict";

(() => {
  const core = FluxCore; // flux-core.js, inlined before this script
  const START = performance.now();
  const meta = JSON.parse(document.getElementById("flux-meta").textContent);
  const errors = [];
  window.addEventListener("error", (event) => errors.push(String(event.message || event)));
  window.addEventListener("unhandledrejection", (event) => errors.push(String(event.reason)));

  // The state codes and "never" come from the page's metadata (explorer/pooling.py): one source.
  const CODES = meta.codes;
  const STATE_COLOURS = ["#d9d9d9", "#2e8b57", "#e0a526", "#c0392b"];
  const STATE_RGB = STATE_COLOURS.map((c) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16)));
  const STATE_KINDS = [["participating", CODES.PARTICIPATING], ["frozen", CODES.FROZEN], ["dead", CODES.DEAD]];
  const PALETTE = ["#1f5fa8", "#c0392b", "#2e8b57", "#8e44ad", "#e0a526", "#16a085", "#7f8c8d", "#d35400"];

  // -- the state, and what the page decoded ------------------------------------------------------------------------

  const state = {
    run: 0, layer: 0, quantity: meta.quantities[0].name, order: "index", from: null, to: null, neuron: null,
    overviewState: "dead", overviewSort: "model", filter: "", pair: 0, pairView: "difference",
  };
  const data = {buffer: null, cache: new Map()};
  const view = {selected: null, drawn: {}, overview: {order: [], rises: {}}, pairDrawn: null};
  const dom = {};

  function array(name) {
    if (data.cache.has(name)) return data.cache.get(name);
    const entry = meta.manifest[name];
    if (!entry) throw new Error("no array " + name + " in the page");
    const count = entry.shape.reduce((a, b) => a * b, 1);
    let out;
    if (entry.dtype === "bf16") out = core.fromBfloat16(new Uint16Array(data.buffer, entry.offset, count));
    else if (entry.dtype === "u8") out = new Uint8Array(data.buffer, entry.offset, count);
    else if (entry.dtype === "i32") out = new Int32Array(data.buffer, entry.offset, count);
    else out = new Float32Array(data.buffer, entry.offset, count);
    data.cache.set(name, out);
    return out;
  }

  async function decode(text) {
    const binary = atob(text.trim());
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Response(stream).arrayBuffer();
  }

  const run = () => meta.runs[state.run];
  const layer = () => run().layers[Math.min(state.layer, run().layers.length - 1)];
  const bins = (r) => ({first: array(r.bins.first), last: array(r.bins.last)});
  const range = (r) => core.epochRange(array(r.epochs), state.from, state.to);
  const visible = (r) => {
    const b = bins(r);
    const [from, to] = range(r);
    return core.visibleBins(b.first, b.last, from, to);
  };

  function rowsOf(r, L, visibleBins) {
    const count = array(L.rows).length;
    return core.rowOrder(state.order, {
      count, values: state.quantity === "state" ? null : array(L.values[state.quantity]), states: array(L.states),
      lastBin: visibleBins.length ? visibleBins[visibleBins.length - 1] : 0, stops: array(L.stops),
      dies: array(L.dies),
    });
  }

  // -- elements -------------------------------------------------------------------------------------------------

  function el(tag, attrs = {}, children = []) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child) node.appendChild(child);
    return node;
  }

  /** A select whose options are (value, text) pairs; `fill` replaces them, keeping the element (and its focus). */
  function select(label, onchange) {
    const node = el("select", {onchange: (event) => onchange(event.target.value)});
    node.fill = (options, chosen) => {
      const wanted = options.map(([value, text]) => value + "\u0000" + text).join("\u0001");
      if (node.dataset.options !== wanted) {
        node.replaceChildren(...options.map(([value, text]) => el("option", {value: String(value), text})));
        node.dataset.options = wanted;
      }
      node.value = String(chosen);
    };
    return {node, wrapper: el("label", {}, [document.createTextNode(label + " "), node])};
  }

  function prepare(canvas, width, height) {
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    canvas.style.width = width + "px";
    canvas.style.height = height + "px";
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";
    return ctx;
  }

  const widthOf = (node) => Math.max(200, (node.parentNode ? node.parentNode.clientWidth : 800) - 4);

  // -- line charts ------------------------------------------------------------------------------------------------

  /** series: [{x, y, colour, dash, axis, band: {low, high}}]; axes: {x: [a, b], y: [{range, log, colour}], marks}. */
  function lineChart(canvas, width, height, series, axes, labels) {
    const ctx = prepare(canvas, width, height);
    const pad = {l: 44, r: 44, t: 8, b: 20};
    const w = width - pad.l - pad.r;
    const h = height - pad.t - pad.b;
    const x0 = axes.x[0];
    const x1 = axes.x[1] > axes.x[0] ? axes.x[1] : axes.x[0] + 1;
    const sx = (x) => pad.l + (x - x0) / (x1 - x0) * w;
    const scales = (axes.y || []).map((a) => (y) => {
      if (a.log) {
        const l0 = Math.log10(a.range[0]);
        const l1 = Math.log10(a.range[1]);
        return pad.t + h - (Math.log10(y) - l0) / ((l1 - l0) || 1) * h;
      }
      return pad.t + h - (y - a.range[0]) / ((a.range[1] - a.range[0]) || 1) * h;
    });
    ctx.strokeStyle = "#999";
    ctx.strokeRect(pad.l, pad.t, w, h);
    ctx.fillStyle = "#444";
    ctx.fillText(String(Math.round(x0)), pad.l, height - 6);
    ctx.textAlign = "right";
    ctx.fillText(String(Math.round(x1)), pad.l + w, height - 6);
    ctx.textAlign = "left";
    (axes.y || []).forEach((a, side) => {
      const x = side ? pad.l + w + 3 : 3;
      ctx.fillStyle = a.colour || "#444";
      ctx.fillText(core.fmt(a.range[1]), x, pad.t + 9);
      ctx.fillText(core.fmt(a.range[0]), x, pad.t + h);
    });
    for (const s of series) {
      const axis = axes.y[s.axis || 0];
      const sy = scales[s.axis || 0];
      const inside = (i) => s.x[i] >= x0 && s.x[i] <= x1;
      if (s.band) {
        ctx.fillStyle = s.colour;
        ctx.globalAlpha = 0.18;
        ctx.beginPath();
        let started = false;
        for (let i = 0; i < s.x.length; i++) {
          if (!Number.isFinite(s.band.high[i]) || !inside(i)) continue;
          if (started) ctx.lineTo(sx(s.x[i]), sy(s.band.high[i]));
          else { ctx.moveTo(sx(s.x[i]), sy(s.band.high[i])); started = true; }
        }
        for (let i = s.x.length - 1; i >= 0; i--) {
          if (Number.isFinite(s.band.low[i]) && inside(i)) ctx.lineTo(sx(s.x[i]), sy(s.band.low[i]));
        }
        if (started) ctx.fill();
        ctx.globalAlpha = 1;
      }
      ctx.strokeStyle = s.colour;
      ctx.lineWidth = s.width || 1.4;
      ctx.setLineDash(s.dash || []);
      ctx.beginPath();
      let pen = false;
      for (let i = 0; i < s.x.length; i++) {
        const y = s.y[i];
        if (!Number.isFinite(y) || !inside(i) || (axis.log && y <= 0)) {
          pen = false;
          continue;
        }
        if (pen) ctx.lineTo(sx(s.x[i]), sy(y));
        else { ctx.moveTo(sx(s.x[i]), sy(y)); pen = true; }
      }
      ctx.stroke();
      ctx.setLineDash([]);
    }
    for (const m of axes.marks || []) {
      if (m.x < x0 || m.x > x1) continue;
      ctx.strokeStyle = m.colour;
      ctx.setLineDash([3, 2]);
      ctx.beginPath();
      ctx.moveTo(sx(m.x), pad.t);
      ctx.lineTo(sx(m.x), pad.t + h);
      ctx.stroke();
      ctx.setLineDash([]);
    }
    let lx = pad.l + 6;
    for (const label of labels || []) {
      ctx.fillStyle = label.colour;
      ctx.fillRect(lx, pad.t + 4, 10, 3);
      ctx.fillStyle = "#333";
      ctx.fillText(label.text, lx + 13, pad.t + 10);
      lx += ctx.measureText(label.text).width + 26;
    }
    return {toEpoch: (px) => x0 + (px - pad.l) / w * (x1 - x0)};
  }

  function legend(canvas, scale) {
    const width = Math.min(420, widthOf(canvas));
    const ctx = prepare(canvas, width, 34);
    if (!scale) {
      let x = 4;
      meta.states.forEach((name, s) => {
        ctx.fillStyle = STATE_COLOURS[s];
        ctx.fillRect(x, 6, 12, 12);
        ctx.fillStyle = "#333";
        ctx.fillText(name, x + 16, 16);
        x += ctx.measureText(name).width + 30;
      });
      return;
    }
    const bar = width - 150;
    for (let i = 0; i < bar; i++) {
      ctx.fillStyle = core.hex(scale.centred ? core.diverging(i / (bar - 1)) : core.viridis(i / (bar - 1)));
      ctx.fillRect(4 + i, 4, 1, 12);
    }
    ctx.fillStyle = "#333";
    ctx.fillText(core.fmt(scale.low), 4, 30);
    ctx.textAlign = "right";
    ctx.fillText(core.fmt(scale.high) + (scale.log ? " (log)" : ""), 4 + bar, 30);
    ctx.textAlign = "left";
    ctx.fillStyle = core.hex(core.NAN_COLOUR);
    ctx.fillRect(bar + 12, 4, 12, 12);
    ctx.fillStyle = "#333";
    ctx.fillText("not defined", bar + 28, 14);
    if (scale.log) {
      ctx.fillStyle = core.hex(core.NONPOSITIVE_COLOUR);
      ctx.fillRect(bar + 12, 19, 12, 12);
      ctx.fillStyle = "#333";
      ctx.fillText("\u2264 0", bar + 28, 29);
    }
  }

  // -- heatmaps -----------------------------------------------------------------------------------------------------

  /** Paint rows x bins of `values` (or the states) into a w x h box of `ctx`. */
  function paint(ctx, {values, states, count, visibleBins, rows, scale}, x, y, w, h) {
    const image = ctx.createImageData(Math.max(1, visibleBins.length), Math.max(1, rows.length));
    const pixels = image.data;
    for (let j = 0; j < rows.length; j++) {
      for (let b = 0; b < visibleBins.length; b++) {
        const index = visibleBins[b] * count + rows[j];
        const rgb = values ? scale.colour(values[index]) : STATE_RGB[states[index]];
        const p = (j * visibleBins.length + b) * 4;
        pixels[p] = rgb[0];
        pixels[p + 1] = rgb[1];
        pixels[p + 2] = rgb[2];
        pixels[p + 3] = 255;
      }
    }
    const off = document.createElement("canvas");
    off.width = image.width;
    off.height = image.height;
    off.getContext("2d").putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, x, y, w, h);
  }

  function resetsOf(r, L) {
    const marks = r.resets && r.resets[L.name];
    if (!marks) return null;
    return {epochs: array(marks.epochs), neurons: array(marks.neurons), policy: marks.policy, dryRun: marks.dry_run};
  }

  function drawHeatmap() {
    const r = run();
    const L = layer();
    const q = state.quantity;
    const visibleBins = visible(r);
    const rows = rowsOf(r, L, visibleBins);
    const width = widthOf(dom.heat);
    const rowHeight = Math.max(1, Math.min(6, Math.floor(520 / Math.max(1, rows.length))));
    const ctx = prepare(dom.heat, width, Math.max(60, rows.length * rowHeight));
    const scale = q === "state" ? null : core.scaleFor([L.ranges[q]]);
    const neurons = array(L.rows);
    paint(ctx, {values: scale ? array(L.values[q]) : null, states: array(L.states), count: neurons.length,
      visibleBins, rows, scale}, 0, 0, width, rows.length * rowHeight);
    const marks = resetsOf(r, L);
    let resetCount = 0;
    if (marks) {  // a reset: a short black tick at its bin and row
      const b = bins(r);
      const cells = core.resetCells(marks.epochs, marks.neurons, Array.from(visibleBins, (i) => b.first[i]),
        Array.from(visibleBins, (i) => b.last[i]), rows.map((i) => neurons[i]));
      ctx.fillStyle = "#000";
      for (const cell of cells) {
        ctx.fillRect((cell.bin + 0.5) * width / visibleBins.length - 1, cell.row * rowHeight, 2, rowHeight);
      }
      resetCount = cells.length;
    }
    view.drawn = {run: r.id, layer: L.name, quantity: q, order: state.order, rows: rows.slice(),
      bins: visibleBins.slice(), width, rowHeight, resets: resetCount,
      scale: scale ? {low: scale.low, high: scale.high, log: scale.log} : null, at: performance.now()};
    if (api.timings.firstHeatmap === null) api.timings.firstHeatmap = performance.now();
    legend(dom.legend, scale);
    dom.heatTitle.textContent = L.name + " \u00b7 " + (q === "state" ? "state per window" : q) + " \u00b7 " +
      rows.length + (L.banded ? " drawn rows (quantile bands and extreme neurons) of " + L.width + " neurons" :
        " of " + L.width + " neurons") + " \u00b7 " + visibleBins.length + " of " + array(r.bins.first).length +
      " bins" + (marks ? " \u00b7 black ticks: " + (marks.dryRun ? "would-be " : "") + marks.policy + " resets" : "");
  }

  function cellAt(event) {
    const rect = dom.heat.getBoundingClientRect();
    const d = view.drawn;
    const row = Math.floor((event.clientY - rect.top) / d.rowHeight);
    const bin = Math.floor((event.clientX - rect.left) / d.width * d.bins.length);
    if (row < 0 || row >= d.rows.length || bin < 0 || bin >= d.bins.length) return null;
    return {row: d.rows[row], bin: d.bins[bin]};
  }

  function describeCell(cell) {
    const r = run();
    const L = layer();
    const b = bins(r);
    const n = array(L.rows).length;
    const q = state.quantity;
    const first = b.first[cell.bin];
    const last = b.last[cell.bin];
    const neuron = array(L.rows)[cell.row];
    const label = neuron < 0 ? "quantile " + meta.bands[-neuron - 1] + " of " + L.width + " neurons" :
      "neuron " + neuron;
    const when = first === last ? "epoch " + first : "epochs " + first + "\u2013" + last + " (mean)";
    const value = q === "state" ? meta.states[array(L.states)[cell.bin * n + cell.row]] :
      core.fmt(array(L.values[q])[cell.bin * n + cell.row]);
    return L.name + " \u00b7 " + label + " \u00b7 " + when + " \u00b7 " +
      (q === "state" ? "state at epoch " + last : q) + ": " + value;
  }

  // -- the network and its layers -------------------------------------------------------------------------------

  function drawNetwork() {
    const r = run();
    const epochs = array(r.epochs);
    const all = array(r.fractions);
    const series = STATE_KINDS.map(([, code], s) => ({
      x: epochs, y: Array.from({length: epochs.length}, (_, i) => all[i * 3 + s]), colour: STATE_COLOURS[code]}));
    const labels = STATE_KINDS.map(([name, code]) => ({text: name, colour: STATE_COLOURS[code]}));
    const axes = {x: range(r), y: [{range: [0, 1]}]};
    if (r.loss.length) {
      const loss = r.loss[0];
      const values = array(loss.values);
      axes.y.push({range: core.valueRange(values, true), log: true, colour: "#1f5fa8"});
      series.push({x: array(loss.steps), y: values, colour: "#1f5fa8", axis: 1});
      labels.push({text: loss.key, colour: "#1f5fa8"});
    }
    dom.network.chart = lineChart(dom.network, widthOf(dom.network), 170, series, axes, labels);
  }

  /** Every layer at once: a row each (its fraction in the chosen state over the snapshots), grouped by module path,
   * filtered and sorted; a click opens that layer's heatmap. */
  function drawLayers() {
    const r = run();
    const names = r.layers.map((L) => L.name);
    const column = STATE_KINDS.findIndex(([name]) => name === state.overviewState);
    const info = r.layers.map((L, index) => {
      const fractions = array(L.fractions);
      const rise = core.firstRise(fractions, 2, meta.rise);  // the dead fraction
      const epochs = array(r.epochs);
      return {index, name: L.name, rise: rise < 0 ? -1 : epochs[rise], final: fractions[fractions.length - 3 + column]};
    });
    const shown = new Set(core.filterLayers(names, state.filter));
    const sorted = core.sortLayers(state.overviewSort, info).filter((l) => shown.has(l.index));
    const groups = state.overviewSort === "model" ? core.layerGroups(names) : [{path: "", layers: sorted}];
    const rowsByIndex = new Map(sorted.map((l) => [l.index, l]));
    const list = [];
    const stripWidth = Math.max(120, widthOf(dom.layers) - 330);
    const [from, to] = range(r);
    const epochs = array(r.epochs);
    const inRange = [];
    for (let i = 0; i < epochs.length; i++) if (epochs[i] >= from && epochs[i] <= to) inRange.push(i);
    for (const group of groups) {
      const members = group.layers.filter((l) => rowsByIndex.has(l.index));
      if (!members.length) continue;
      if (group.path) list.push(el("div", {class: "layer-group", text: group.path}));
      for (const member of members) {
        const L = r.layers[member.index];
        const entry = rowsByIndex.get(member.index);
        const canvas = el("canvas", {class: "layer-strip"});
        const row = el("div", {class: "layer-row" + (member.index === state.layer ? " chosen" : ""),
          title: L.name + " (" + L.width + " neurons)" + (entry.rise >= 0 ? "; dead fraction first rises at epoch " +
            entry.rise : ""), "data-layer": L.name,
          onclick: () => setState({layer: member.index, neuron: null})}, [
          el("span", {class: "layer-name", text: state.overviewSort === "model" ? member.short || L.name : L.name}),
          el("span", {class: "layer-width", text: String(L.width)}), canvas,
          el("span", {class: "layer-rise", text: entry.rise >= 0 ? "rises @" + entry.rise : ""})]);
        list.push(row);
        const ctx = prepare(canvas, stripWidth, 12);
        const fractions = array(L.fractions);
        for (let c = 0; c < stripWidth && inRange.length; c++) {
          const k = inRange[Math.min(inRange.length - 1, Math.floor(c / stripWidth * inRange.length))];
          const v = fractions[k * 3 + column];
          ctx.fillStyle = Number.isFinite(v) ? core.hex(core.viridis(v)) : core.hex(core.NAN_COLOUR);
          ctx.fillRect(c, 0, 1, 12);
        }
      }
    }
    dom.layers.replaceChildren(...list);
    dom.layersNote.textContent = sorted.length + " of " + names.length + " layers; colour: the " + state.overviewState +
      " fraction of each layer's neurons (0 dark, 1 bright) over the chosen epochs";
    view.overview = {order: sorted.map((l) => l.name), rises: Object.fromEntries(info.map((l) => [l.name, l.rise]))};
  }

  // -- one neuron -------------------------------------------------------------------------------------------------

  function series(runIndex, layerName, neuron) {
    const r = meta.runs[runIndex];
    const L = r && r.layers.find((l) => l.name === layerName);
    if (!L) return null;
    const rows = array(L.rows);
    const row = rows.indexOf(neuron);
    if (row < 0) return null;
    const b = bins(r);
    const n = rows.length;
    const out = {run: r.id, layer: layerName, neuron, first: Array.from(b.first), last: Array.from(b.last),
      values: {}, states: [], resets: []};
    for (const q of Object.keys(L.values)) {
      const v = array(L.values[q]);
      out.values[q] = Array.from({length: b.first.length}, (_, k) => v[k * n + row]);
    }
    const s = array(L.states);
    for (let k = 0; k < b.first.length; k++) out.states.push(meta.states[s[k * n + row]]);
    const marks = resetsOf(r, L);
    if (marks) {
      for (let k = 0; k < marks.epochs.length; k++) {
        if (marks.neurons[k] === neuron || marks.neurons[k] < 0) out.resets.push(marks.epochs[k]);
      }
    }
    return out;
  }

  function drawNeuron() {
    const panel = dom.neuron;
    if (state.neuron === null) {
      view.selected = null;
      panel.replaceChildren(el("p", {class: "hint", text: "Click a cell of the heatmap to see all of that neuron's " +
        "quantities."}));
      return;
    }
    const r = run();
    const L = layer();
    const picked = series(state.run, L.name, state.neuron);
    view.selected = picked;
    if (!picked) {
      panel.replaceChildren();
      return;
    }
    const changes = [];
    for (let b = 1; b < picked.states.length; b++) {
      if (picked.states[b] !== picked.states[b - 1]) {
        changes.push({x: picked.last[b], colour: STATE_COLOURS[meta.states.indexOf(picked.states[b])],
          text: picked.states[b - 1] + " \u2192 " + picked.states[b] + " by epoch " + picked.last[b]});
      }
    }
    const marks = [...changes, ...picked.resets.map((x) => ({x, colour: "#000"}))];
    const grid = el("div", {class: "minis"});
    const table = el("table", {class: "values"});
    const lastBin = picked.last.length - 1;
    for (const q of meta.quantities) {
      if (!picked.values[q.name]) continue;
      const canvas = el("canvas");
      grid.appendChild(el("div", {class: "mini"}, [el("div", {class: "mini-title", text: q.name}), canvas]));
      const logged = L.ranges[q.name] && L.ranges[q.name][3];
      lineChart(canvas, 250, 90, [{x: picked.last, y: picked.values[q.name], colour: "#1f5fa8"}],
        {x: range(r), y: [{range: core.valueRange(picked.values[q.name], logged), log: logged}], marks});
      table.appendChild(el("tr", {}, [el("th", {text: q.name}), el("td", {class: "value", "data-quantity": q.name,
        text: core.fmt(picked.values[q.name][lastBin])})]));
    }
    panel.replaceChildren(
      el("h3", {text: "Neuron " + state.neuron + " of " + L.name + " (" + r.name + ")"}),
      el("p", {class: "changes", text: (changes.length ? "State changes: " + changes.map((c) => c.text).join("; ") :
        "State: " + (picked.states[lastBin] || "") + " throughout") +
        (picked.resets.length ? " \u00b7 reset at epoch " + picked.resets.join(", ") + " (black lines)" : "")}),
      grid, el("p", {class: "hint", text: "Values at the last bin (epoch " + picked.last[lastBin] + "):"}), table);
  }

  // -- several runs ------------------------------------------------------------------------------------------------

  function drawRuns() {
    if (meta.runs.length < 2) return;
    const name = layer().name;
    const q = state.quantity;
    const ranges = [];
    for (const r of meta.runs) for (const L of r.layers) if (L.name === name && q !== "state") ranges.push(L.ranges[q]);
    const scale = q === "state" ? null : core.scaleFor(ranges);
    legend(dom.runsLegend, scale);
    const boxes = meta.groups.map((group) => el("div", {class: "group"}, [el("h4", {text: group.name}),
      ...group.runs.map((index) => {
        const r = meta.runs[index];
        const L = r.layers.find((l) => l.name === name);
        const canvas = el("canvas", {title: "show this run above", onclick: () => setState({run: index})});
        const cell = el("div", {class: "run-cell"}, [el("div", {class: "run-name", text: r.name}), canvas]);
        if (!L) {
          cell.appendChild(el("p", {class: "hint", text: "no layer " + name}));
          return cell;
        }
        const visibleBins = visible(r);
        const rows = rowsOf(r, L, visibleBins);
        const h = Math.max(40, Math.min(160, rows.length));
        paint(prepare(canvas, 220, h), {values: scale ? array(L.values[q]) : null, states: array(L.states),
          count: array(L.rows).length, visibleBins, rows, scale}, 0, 0, 220, h);
        return cell;
      })]));
    dom.runs.replaceChildren(...boxes);
    drawGroupCurves();
  }

  function drawGroupCurves() {
    // Every group's participating (solid), frozen (dashed) and dead (dotted) fractions, each with its 95% interval.
    const dashes = [[], [6, 3], [2, 3]];
    const series = [];
    const labels = [];
    meta.groups.forEach((group, g) => {
      if (!group.curves) return;
      const c = group.curves;
      const x = array(c.epochs);
      const colour = PALETTE[g % PALETTE.length];
      const pick = (a, s) => Array.from({length: x.length}, (_, i) => a[i * 3 + s]);
      for (let s = 0; s < 3; s++) {
        series.push({x, y: pick(array(c.mean), s), colour, dash: dashes[s],
          band: {low: pick(array(c.low), s), high: pick(array(c.high), s)}});
      }
      labels.push({text: group.name + " (" + group.runs.length + ")", colour});
    });
    labels.push({text: "\u2014 participating, - - frozen, \u00b7\u00b7 dead", colour: "#333"});
    lineChart(dom.groupCurves, widthOf(dom.groupCurves), 220, series, {x: range(run()), y: [{range: [0, 1]}]}, labels);
  }

  // -- runs that share their start --------------------------------------------------------------------------------

  function pairSeries(pairIndex, layerName, neuron) {
    const pair = meta.pairs[pairIndex];
    if (!pair) return null;
    const a = series(pair.a, layerName, neuron);
    const b = series(pair.b, layerName, neuron);
    const entry = pair.layers[layerName];
    if (!a || !b || !entry) return null;
    const L = meta.runs[pair.a].layers.find((l) => l.name === layerName);
    const row = array(L.rows).indexOf(neuron);
    const n = array(L.rows).length;
    const difference = {};
    for (const q of Object.keys(entry)) {
      const v = array(entry[q]);
      difference[q] = Array.from({length: a.first.length}, (_, k) => v[k * n + row]);
    }
    return {a, b, difference};
  }

  function drawPairs() {
    if (!dom.pairs) return;
    if (!meta.pairs.length) return;
    const pair = meta.pairs[Math.min(state.pair, meta.pairs.length - 1)];
    const a = meta.runs[pair.a];
    const b = meta.runs[pair.b];
    const L = a.layers.find((l) => l.name === layer().name);
    const q = state.quantity === "state" ? meta.quantities[0].name : state.quantity;
    const entry = pair.layers[layer().name];
    if (!L || !entry || !entry[q]) {
      view.pairDrawn = null;
      dom.pairTitle.textContent = "Layer " + layer().name + " is not compared neuron by neuron: " +
        (pair.skipped.find((s) => s.startsWith(layer().name + " ")) || "not in both runs");
      prepare(dom.pairHeat, widthOf(dom.pairHeat), 10);
      return;
    }
    const visibleBins = visible(a);
    const rows = rowsOf(a, L, visibleBins);
    const scale = core.differenceScale([pair.ranges[L.name][q]]);
    const width = widthOf(dom.pairHeat);
    const rowHeight = Math.max(1, Math.min(6, Math.floor(400 / Math.max(1, rows.length))));
    paint(prepare(dom.pairHeat, width, Math.max(40, rows.length * rowHeight)), {values: array(entry[q]),
      states: null, count: array(L.rows).length, visibleBins, rows, scale}, 0, 0, width, rows.length * rowHeight);
    legend(dom.pairLegend, scale);
    dom.pairTitle.textContent = q + " of " + L.name + ": " + a.name + " minus " + b.name + ", neuron by neuron " +
      "(computed in float32 before the page's encoding); same start: fingerprint " + (a.fingerprint || "").slice(0, 12);
    view.pairDrawn = {pair: state.pair, layer: L.name, quantity: q, rows: rows.slice(), bins: visibleBins.slice()};
    const neuron = state.neuron !== null ? state.neuron : array(L.rows)[rows[0]];
    const both = pairSeries(state.pair, L.name, neuron);
    if (both) {
      const values = [...both.a.values[q], ...both.b.values[q]];
      const logged = L.ranges[q] && L.ranges[q][3];
      lineChart(dom.pairNeuron, widthOf(dom.pairNeuron), 150,
        [{x: both.a.last, y: both.a.values[q], colour: PALETTE[0]}, {x: both.b.last, y: both.b.values[q],
          colour: PALETTE[1], dash: [5, 3]}],
        {x: range(a), y: [{range: core.valueRange(values, logged), log: logged}]},
        [{text: "neuron " + neuron + ": " + a.name, colour: PALETTE[0]}, {text: b.name, colour: PALETTE[1]}]);
    }
  }

  // -- controls and updates ---------------------------------------------------------------------------------------

  function updateControls() {
    const r = run();
    if (dom.runSelect) dom.runSelect.fill(meta.runs.map((x, i) => [i, x.name]), state.run);
    dom.layerSelect.fill(r.layers.map((L, i) => [i, L.name + " (" + L.width + ")"]), state.layer);
    dom.quantitySelect.fill([...meta.quantities.map((q) => [q.name, q.name]), ["state", "state per window"]],
      state.quantity);
    dom.orderSelect.fill([["index", "by index"], ["final", "by last value"], ["stops", "by when it stops " +
      "participating"], ["dies", "by when it dies"]], state.order);
    dom.overviewSelect.fill(STATE_KINDS.map(([name]) => [name, name]), state.overviewState);
    dom.sortSelect.fill([["model", "model order, grouped"], ["rise", "when the dead fraction first rises"],
      ["final", "last value, high first"], ["name", "name"]], state.overviewSort);
    if (dom.pairSelect) {
      dom.pairSelect.fill(meta.pairs.map((p, i) => [i, meta.runs[p.a].name + " vs " + meta.runs[p.b].name]),
        state.pair);
    }
    const [from, to] = range(r);
    const epochs = array(r.epochs);
    for (const [input, value] of [[dom.from, from], [dom.to, to]]) {
      input.min = epochs[0];
      input.max = epochs[epochs.length - 1];
      if (document.activeElement !== input) input.value = value;
    }
  }

  function setState(changes) {
    Object.assign(state, changes);
    if (state.from !== null && state.to !== null && state.from > state.to) [state.from, state.to] = [state.to, state.from];
    update();
  }

  function update() {
    updateControls();
    drawNetwork();
    drawLayers();
    drawHeatmap();
    drawNeuron();
    drawRuns();
    drawPairs();
  }

  function build() {
    const app = document.getElementById("app");
    const header = el("header", {}, [el("h1", {text: meta.title}), el("p", {class: "what", text: meta.subtitle})]);
    if (meta.live) {
      const banded = meta.runs.some((r) => r.layers.some((L) => L.banded));
      header.appendChild(el("p", {class: "live", text: "Live: this page is refreshed while the run trains; it " +
        "holds the snapshots up to epoch " + meta.live.snapshot + " (" + meta.live.snapshots + " snapshots), " +
        "written " + meta.live.written + "." + (banded ? " Layers wider than the neuron budget show their " +
        "quantile bands; their extreme neurons come when the run closes." : "")}));
    }
    for (const line of meta.pooled) header.appendChild(el("p", {class: "pooled", text: line}));
    header.appendChild(el("p", {class: "resolution", text: meta.resolution}));
    const controls = el("div", {class: "controls"});
    if (meta.runs.length > 1) {
      const s = select("run", (v) => setState({run: +v, neuron: null}));
      dom.runSelect = s.node;
      controls.appendChild(s.wrapper);
    }
    for (const [key, label, handler] of [
      ["layerSelect", "layer", (v) => setState({layer: +v, neuron: null})],
      ["quantitySelect", "quantity", (v) => setState({quantity: v})],
      ["orderSelect", "order", (v) => setState({order: v})]]) {
      const s = select(label, handler);
      dom[key] = s.node;
      controls.appendChild(s.wrapper);
    }
    dom.from = el("input", {type: "number", class: "epoch"});
    dom.to = el("input", {type: "number", class: "epoch"});
    const apply = () => setState({from: +dom.from.value, to: +dom.to.value});
    dom.from.addEventListener("change", apply);
    dom.to.addEventListener("change", apply);
    controls.append(el("label", {}, [document.createTextNode("epochs "), dom.from, document.createTextNode(" to "),
      dom.to]), el("button", {text: "all epochs", onclick: () => setState({from: null, to: null})}));
    dom.network = el("canvas", {class: "overview"});
    const overviewSelect = select("colour", (v) => setState({overviewState: v}));
    const sortSelect = select("sort", (v) => setState({overviewSort: v}));
    dom.overviewSelect = overviewSelect.node;
    dom.sortSelect = sortSelect.node;
    dom.filter = el("input", {type: "search", class: "filter", placeholder: "filter layers (words of their names)",
      oninput: (event) => setState({filter: event.target.value})});
    dom.layers = el("div", {class: "layers"});
    dom.layersNote = el("p", {class: "hint"});
    dom.heatTitle = el("h2");
    dom.heat = el("canvas", {class: "heatmap"});
    dom.legend = el("canvas", {class: "legend"});
    dom.tip = el("div", {class: "tip", hidden: "hidden"});
    dom.neuron = el("section", {class: "neuron"});
    const sections = [header, controls,
      el("section", {}, [el("h2", {text: "The network: loss, and its participating, frozen and dead neurons (drag " +
        "to zoom)"}), dom.network]),
      el("section", {class: "overview-layers"}, [el("h2", {text: "Every layer"}), el("div", {class: "controls"},
        [dom.filter, overviewSelect.wrapper, sortSelect.wrapper]), dom.layersNote, dom.layers]),
      el("section", {}, [dom.heatTitle, dom.legend, dom.heat, dom.tip]), dom.neuron];
    if (meta.runs.length > 1) {
      dom.runs = el("div", {class: "runs"});
      dom.runsLegend = el("canvas", {class: "legend"});
      dom.groupCurves = el("canvas", {class: "overview"});
      sections.push(el("section", {}, [el("h2", {text: "All runs: the chosen layer and quantity, one colour scale, " +
        "grouped as the report groups them"}), dom.runsLegend, dom.runs, el("h3", {text: "Groups: participating, " +
        "frozen and dead fractions over epochs, mean and 95% interval over each group's runs"}), dom.groupCurves]));
      const pairing = [el("h2", {text: "Same start, same neuron"})];
      if (meta.pairs.length) {
        const s = select("pair", (v) => setState({pair: +v}));
        dom.pairSelect = s.node;
        dom.pairTitle = el("p", {class: "hint"});
        dom.pairLegend = el("canvas", {class: "legend"});
        dom.pairHeat = el("canvas", {class: "pair-heatmap"});
        dom.pairNeuron = el("canvas", {class: "pair-neuron"});
        pairing.push(el("div", {class: "controls"}, [s.wrapper]), dom.pairTitle, dom.pairLegend, dom.pairHeat,
          el("h3", {text: "One neuron in both runs (the neuron chosen above, else the first drawn)"}), dom.pairNeuron);
      } else {
        pairing.push(el("p", {class: "unpaired", text: meta.unpaired || "no two runs share their start"}));
      }
      dom.pairs = el("section", {class: "pairs"}, pairing);
      sections.push(dom.pairs);
    }
    app.replaceChildren(...sections);
    let start = null;
    dom.network.addEventListener("mousedown", (event) => { start = event.offsetX; });
    dom.network.addEventListener("mouseup", (event) => {
      if (start === null || !dom.network.chart) return;
      const picked = core.brushRange(dom.network.chart.toEpoch, start, event.offsetX);
      start = null;
      if (picked) setState({from: picked[0], to: picked[1]});
    });
    dom.heat.addEventListener("mousemove", (event) => {
      const cell = cellAt(event);
      dom.tip.hidden = !cell;
      if (!cell) return;
      dom.tip.textContent = describeCell(cell);
      dom.tip.style.left = (event.pageX + 12) + "px";
      dom.tip.style.top = (event.pageY + 12) + "px";
    });
    dom.heat.addEventListener("mouseleave", () => { dom.tip.hidden = true; });
    dom.heat.addEventListener("click", (event) => {
      const cell = cellAt(event);
      const neuron = cell ? array(layer().rows)[cell.row] : -1;
      if (neuron >= 0) setState({neuron});
    });
    window.addEventListener("resize", () => { if (data.buffer) update(); });
  }

  const api = window.fluxExplorer = {
    version: meta.version,
    runs: meta.runs.map((r) => ({id: r.id, name: r.name, group: r.group, fingerprint: r.fingerprint})),
    quantities: meta.quantities.map((q) => q.name),
    resolution: meta.resolution,
    pooled: meta.pooled,
    live: meta.live,
    pairs: meta.pairs.map((p) => ({a: p.a, b: p.b, layers: Object.keys(p.layers), skipped: p.skipped})),
    layers: (runIndex) => meta.runs[runIndex || 0].layers.map((L) => L.name),
    series: (runIndex, layerName, neuron) => series(runIndex, layerName, neuron),
    pairSeries: (pairIndex, layerName, neuron) => pairSeries(pairIndex, layerName, neuron),
    select: (changes) => {
      setState(changes);
      return api.state;
    },
    // Where the heatmap draws row `row` (a position in the layer's rows) at bin `bin`, in the canvas's own pixels.
    cellCenter: (row, bin) => {
      const d = view.drawn;
      const position = d.rows.indexOf(row);
      const column = d.bins.indexOf(bin);
      if (position < 0 || column < 0) return null;
      return {x: (column + 0.5) * d.width / d.bins.length, y: (position + 0.5) * d.rowHeight};
    },
    timings: {start: START, decoded: null, firstHeatmap: null},
    errors,
  };
  Object.defineProperty(api, "state", {get: () => ({...state}), enumerable: true});
  Object.defineProperty(api, "selected", {get: () => view.selected, enumerable: true});
  Object.defineProperty(api, "drawn", {get: () => view.drawn, enumerable: true});
  Object.defineProperty(api, "overview", {get: () => view.overview, enumerable: true});

  api.ready = decode(document.getElementById("flux-data").textContent).then((buffer) => {
    data.buffer = buffer;
    api.timings.decoded = performance.now();
    build();
    update();
    document.body.setAttribute("data-ready", "true");
    return true;
  }).catch((error) => {
    errors.push(String(error));
    document.getElementById("app").textContent = "This page could not be drawn: " + error;
    throw error;
  });
})();
