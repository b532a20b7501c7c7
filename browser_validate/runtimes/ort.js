// ONNX Runtime Web adapter: implements the Adapter interface of adapter.js.
//
// ORT's own backend is its execution provider; for the targets it runs on the EP has the target's name.
// One bundle per target, as a deployed app would import it: the wasm-only bundle is the smallest; the
// webgpu bundle ("onnxruntime-web/webgpu") carries its own wasm build. Each bundle loads a wasm glue module and
// its wasm binary: both are named here, so they come from where `runtime.url` says, never from a CDN.

const EXECUTION_PROVIDER = {wasm: 'wasm', webgpu: 'webgpu'};
const BUNDLES = {
  wasm: {module: 'ort/ort.wasm.min.mjs', mjs: 'ort/ort-wasm-simd-threaded.mjs', wasm: 'ort/ort-wasm-simd-threaded.wasm'},
  webgpu: {module: 'ort/ort.webgpu.min.mjs', mjs: 'ort/ort-wasm-simd-threaded.asyncify.mjs',
           wasm: 'ort/ort-wasm-simd-threaded.asyncify.wasm'},
};

// A variant may ship session options with its model: a JSON file of this name among its model files (e.g.
// {"graphOptimizationLevel": "disabled"} for a graph optimized offline). The measuring page and the web app's
// loader both hand every model file to load(), so what ships is what was measured.
const SESSION_OPTIONS_FILE = 'ort-session-options.json';
const SHIPPABLE_OPTIONS = new Set(['graphOptimizationLevel', 'extra']);

let ort = null;
let session = null;
let targetUsed = null;

async function importOrt(target, runtime) {
  const b = BUNDLES[target];
  if (!b) throw new Error(`ort: does not run on target ${target}`);
  ort = await import(runtime.url(b.module));
  ort.env.wasm.wasmPaths = {mjs: runtime.url(b.mjs), wasm: runtime.url(b.wasm)};
  ort.env.wasm.simd = true;  // only SIMD builds ship in 1.30; kept explicit for older pins
  ort.env.logLevel = 'warning';
  return ort;
}

export async function load({files, target, threads, runtime}) {
  await importOrt(target, runtime);
  ort.env.wasm.numThreads = threads;
  targetUsed = target;
  session = await ort.InferenceSession.create(...sessionArgs(files, target));
  if (EXECUTION_PROVIDER[target] === 'webgpu') runtime.lib.watchGpuDevice(await ort.env.webgpu.device);
  return {info: {inputNames: session.inputNames, outputNames: session.outputNames}};
}

// The model bytes and session options load() creates its session with.
function sessionArgs(files, target, extra = {}) {
  const [entry, ...rest] = files.filter((f) => f.name !== SESSION_OPTIONS_FILE);
  const options = {
    executionProviders: [EXECUTION_PROVIDER[target]],
    graphOptimizationLevel: 'all',
    ...shippedOptions(files),
    // Extra files (e.g. model.onnx.data) are external weights referenced by relative path.
    externalData: rest.map((f) => ({path: f.name, data: new Uint8Array(f.data)})),
    ...extra,
  };
  return [new Uint8Array(entry.data), options];
}

// onnxruntime says how many nodes each execution provider took, and which ones the GPU provider had no kernel for,
// only in its verbose log: a second session like load()'s, logging verbosely, released at once. Measuring page only,
// after the measurement (the page reads the log: bench.js parsePlacement).
export async function placement({files, target}) {
  const s = await ort.InferenceSession.create(...sessionArgs(files, target, {logSeverityLevel: 0,
                                                                             logVerbosityLevel: 0}));
  await s.release();
}

function shippedOptions(files) {
  const f = files.find((x) => x.name === SESSION_OPTIONS_FILE);
  if (!f) return {};
  const opts = JSON.parse(new TextDecoder().decode(f.data));
  const unknown = Object.keys(opts).filter((k) => !SHIPPABLE_OPTIONS.has(k));
  if (unknown.length) throw new Error(`ort: ${SESSION_OPTIONS_FILE}: unknown session option(s) ${unknown.join(', ')}`);
  return opts;
}

export async function run(feeds) {
  const ortFeeds = {};
  for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = new ort.Tensor(t.dtype, t.data, t.dims);
  const results = await session.run(ortFeeds);
  const out = {};
  for (const [name, t] of Object.entries(results)) {
    // getData() downloads GPU-located tensors; for CPU tensors it is just .data.
    const data = t.location && t.location !== 'cpu' ? await t.getData(true) : t.data;
    out[name] = {data, dims: [...t.dims], dtype: t.type};
  }
  return out;
}

export async function release() {
  if (session) await session.release();
  session = null;
}

export function env() {
  return {
    runtime: 'ort',
    version: ort ? (ort.env.versions && (ort.env.versions.web || ort.env.versions.common)) : null,
    bundle: BUNDLES[targetUsed] && BUNDLES[targetUsed].module,
    wasmThreads: ort ? ort.env.wasm.numThreads : null,
    backend: EXECUTION_PROVIDER[targetUsed] || null,  // the execution provider
  };
}
