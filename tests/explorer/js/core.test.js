// The explorer's pure functions (mlflow_flux/explorer/static/flux-core.js), the same file the page inlines, checked
// with node's own test runner: `node --test tests/explorer/js/` (make test runs it).
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const core = require("../../../mlflow_flux/explorer/static/flux-core.js");

test("bfloat16 bits decode to the float32 of their upper half", () => {
  const values = core.fromBfloat16(Uint16Array.from([16256, 49184, 32640, 0, 0x7fc0]));
  assert.deepEqual(Array.from(values.slice(0, 4)), [1, -2.5, Infinity, 0]);
  assert.ok(Number.isNaN(values[4]));
});

test("numbers read as the page writes them", () => {
  assert.equal(core.fmt(NaN), "not defined");
  assert.equal(core.fmt(-Infinity), "-inf");
  assert.equal(core.fmt(0.012345), "0.01235");
  assert.equal(core.fmt(123456), "1.235e+5");
  assert.equal(core.fmt(0), "0");
});

test("a colour scale clips, keeps NaN and non-positive values apart on log, and is viridis at its ends", () => {
  const scale = core.makeScale(1, 100, true);
  assert.equal(scale.position(10), 0.5);
  assert.deepEqual(scale.colour(1e6), [253, 231, 37]);
  assert.deepEqual(scale.colour(NaN), core.NAN_COLOUR);
  assert.deepEqual(scale.colour(0), core.NONPOSITIVE_COLOUR);
  const linear = core.makeScale(0, 2, false);
  assert.equal(linear.position(0.5), 0.25);
  assert.equal(core.hex([68, 1, 84]), "#440154");
});

test("one scale over several ranges is log only where all are; differences centre on 0", () => {
  const both = core.scaleFor([[0.1, 10, 0.1, true], [0.5, 20, 0.05, true]]);
  assert.deepEqual([both.low, both.high, both.log], [0.05, 20, true]);
  const mixed = core.scaleFor([[-1, 10, 0.1, false], [0.5, 20, 0.05, true]]);
  assert.deepEqual([mixed.low, mixed.high, mixed.log], [-1, 20, false]);
  assert.deepEqual([core.scaleFor([]).low, core.scaleFor([]).high], [0, 1]);
  const diff = core.differenceScale([[-0.2, 0.05, 0.01, false]]);
  assert.deepEqual([diff.low, diff.high, diff.centred], [-0.2, 0.2, true]);
  assert.deepEqual(diff.colour(0), [247, 247, 247]);
});

test("value ranges skip what a log axis cannot show and widen a flat series", () => {
  assert.deepEqual(core.valueRange([1, NaN, 3, -2], false), [-2, 3]);
  assert.deepEqual(core.valueRange([0, 2, 8], true), [2, 8]);
  assert.deepEqual(core.valueRange([5, 5], false), [4, 6]);
  assert.deepEqual(core.valueRange([NaN], true), [1e-3, 1]);
});

test("an epoch range is swapped when backwards and kept within the run", () => {
  const epochs = [0, 10, 20, 30];
  assert.deepEqual(core.epochRange(epochs, null, null), [0, 30]);
  assert.deepEqual(core.epochRange(epochs, 25, 5), [5, 25]);
  assert.deepEqual(core.epochRange(epochs, -5, 99), [0, 30]);
  assert.deepEqual(core.brushRange((px) => px / 2, 40, 10), [5, 20]);
  assert.equal(core.brushRange((px) => px / 100, 10, 40), null);
});

test("visible bins overlap the range; binOf finds the bin of an epoch", () => {
  const first = [0, 4, 8, 12];
  const last = [3, 7, 11, 15];
  assert.deepEqual(core.visibleBins(first, last, 5, 9), [1, 2]);
  assert.equal(core.binOf(first, last, 11), 2);
  assert.equal(core.binOf(first, last, 99), -1);
});

test("rows order by index, last value (NaN last), and when neurons stop or die (never last)", () => {
  const values = Float32Array.from([0, 0, 0, 2, NaN, 5]);  // 2 bins x 3 rows: the last bin is 2, NaN, 5
  const base = {count: 3, values, states: null, lastBin: 1, stops: [7, 3, 2147483647], dies: [2147483647, 1, 1]};
  assert.deepEqual(core.rowOrder("index", base), [0, 1, 2]);
  assert.deepEqual(core.rowOrder("final", base), [2, 0, 1]);
  assert.deepEqual(core.rowOrder("stops", base), [1, 0, 2]);
  assert.deepEqual(core.rowOrder("dies", base), [1, 2, 0]);
  const states = Uint8Array.from([0, 0, 0, 1, 3, 2]);
  assert.deepEqual(core.rowOrder("final", {...base, values: null, states}), [1, 2, 0]);
});

test("layers group by their module path up to the block, and keep their distinguishing part", () => {
  const groups = core.layerGroups(["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc",
    "lm_head", "encoder.fc1", "encoder.fc2"]);
  assert.deepEqual(groups.map((g) => g.path), ["transformer.h.0", "transformer.h.1", "", "encoder"]);
  assert.deepEqual(groups[0].layers.map((l) => l.short), ["attn.c_attn", "mlp.c_fc"]);
  assert.deepEqual(groups[2].layers, [{index: 3, name: "lm_head", short: "lm_head"}]);
});

test("the filter keeps layers whose name holds every word", () => {
  const names = ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc", "transformer.h.1.attn.c_attn"];
  assert.deepEqual(core.filterLayers(names, "MLP h.1"), [1]);
  assert.deepEqual(core.filterLayers(names, ""), [0, 1, 2]);
});

test("a layer's dead fraction first rises at its first snapshot 0.1 above its first window's value", () => {
  // snapshots x (participating, frozen, dead); no window before the third
  const f = Float32Array.from([NaN, NaN, NaN, NaN, NaN, NaN, 0.5, 0.2, 0.3, 0.5, 0.1, 0.35, 0.4, 0.1, 0.4, 0, 0, 0.9]);
  assert.equal(core.firstRise(f, 2, 0.1), 4);
  assert.equal(core.firstRise(f, 0, 0.1), -1);
});

test("layers sort by model order, by when they first rise (never last), by last value and by name", () => {
  const layers = [{index: 0, name: "b", rise: -1, final: 0.2}, {index: 1, name: "a", rise: 40, final: NaN},
    {index: 2, name: "c", rise: 10, final: 0.9}];
  const names = (kind) => core.sortLayers(kind, layers).map((l) => l.name);
  assert.deepEqual(names("model"), ["b", "a", "c"]);
  assert.deepEqual(names("rise"), ["c", "a", "b"]);
  assert.deepEqual(names("final"), ["c", "b", "a"]);
  assert.deepEqual(names("name"), ["a", "b", "c"]);
});

test("resets land on their bin and row; a whole-layer reset marks every row", () => {
  const cells = core.resetCells([5, 9, 9], [7, 3, -1], [0, 8], [7, 15], [3, 7]);
  assert.deepEqual(cells, [{bin: 0, row: 1}, {bin: 1, row: 0}, {bin: 1, row: 0}, {bin: 1, row: 1}]);
});
