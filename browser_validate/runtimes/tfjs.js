// TensorFlow.js adapter (graph models written by pipeline/families/tfjs/convert.py): implements the Adapter interface
// of adapter.js. Each target maps onto the tfjs backend of the same name (tf.setBackend).
// files = [{name, data: ArrayBuffer}] with model.json first, then the weight shards and tfjs_manifest.json.
// The manifest maps the recipe's input/output names onto the graph model's signature / node names, so
// feeds and results use the recipe's names.
//
// The UMD bundles (node_modules/@tensorflow, served and published under tfjs/) define the global `tf` (they work
// the same on the page and inside a module Worker): tfjs (core + converter + cpu + webgl), then the wasm or
// webgpu backend, which attach to that global. Where each file is comes from `runtime.url`.

const CORE = 'tfjs/tfjs/dist/tf.es2017.min.js';
const BACKEND_FOR_TARGET = {wasm: 'wasm', webgl: 'webgl', webgpu: 'webgpu'};
// Bundle per tfjs backend, loaded on top of the core bundle.
const BACKENDS = {
  wasm: 'tfjs/tfjs-backend-wasm/dist/tf-backend-wasm.es2017.min.js',
  webgpu: 'tfjs/tfjs-backend-webgpu/dist/tf-backend-webgpu.es2017.min.js',
  webgl: null,  // in the core bundle
};
// The wasm backend picks one of these by feature detection (SIMD, threads).
const WASM_FILES = ['tfjs-backend-wasm.wasm', 'tfjs-backend-wasm-simd.wasm', 'tfjs-backend-wasm-threaded-simd.wasm'];
const WASM_DIR = 'tfjs/tfjs-backend-wasm/dist/';
const MANIFEST = 'tfjs_manifest.json';

let tf = null;
let model = null;
let manifest = null;
let backendUsed = null;
let useAsync = false;
let details = {};
let inputMap = [];   // [{name (recipe), key (graph model input name), dtype}]
let outputMap = [];  // [{name (recipe), key (graph model output name)}]
let staticInputs = null;   // a graph converted at static shapes: [{name, shape, batchAxis, pad}] (runStatic)
let staticOutputs = null;
let lib = null;            // adapter.js's helpers, from load({runtime})

async function importTf(backend, runtime) {
  if (!globalThis.tf || !globalThis.tf.loadGraphModel) await import(runtime.url(CORE));
  tf = globalThis.tf;
  if (BACKENDS[backend] && !(backend === 'wasm' ? tf.wasm && tf.wasm.setWasmPaths : tf.findBackendFactory('webgpu'))) {
    await import(runtime.url(BACKENDS[backend]));
  }
  return tf;
}

function byName(files) {
  const m = new Map();
  for (const f of files) m.set(f.name, f.data);
  return m;
}

// An IOHandler serving model.json's weight shards from memory, by file name, in manifest order.
function memoryHandler(modelJson, files) {
  return {
    load: async () => {
      const weightSpecs = [];
      const buffers = [];
      for (const group of modelJson.weightsManifest || []) {
        weightSpecs.push(...group.weights);
        for (const path of group.paths) {
          const name = path.split('/').pop();
          const data = files.get(name);
          if (!data) throw new Error(`tfjs: weight shard ${name} missing from the model files`);
          buffers.push(new Uint8Array(data));
        }
      }
      const total = buffers.reduce((n, b) => n + b.byteLength, 0);
      const weightData = new Uint8Array(total);
      let off = 0;
      for (const b of buffers) { weightData.set(b, off); off += b.byteLength; }
      return {
        modelTopology: modelJson.modelTopology,
        format: modelJson.format,
        generatedBy: modelJson.generatedBy,
        convertedBy: modelJson.convertedBy,
        signature: modelJson.signature,
        userDefinedMetadata: modelJson.userDefinedMetadata,
        modelInitializer: modelJson.modelInitializer,
        initializerSignature: modelJson.initializerSignature,
        weightSpecs,
        weightData: weightData.buffer,
      };
    },
  };
}

// Pick the name the graph model accepts for a manifest entry (signature key or node name).
function resolveName(entry, available, what) {
  const node = entry.node || '';
  for (const c of [entry.signature_key, node, node.replace(/:0$/, ''), entry.name]) {
    if (c && available.includes(c)) return c;
  }
  throw new Error(`tfjs: ${what} ${entry.name} (${entry.signature_key}, ${node}) not in the model's ${what}s [${available}]`);
}

async function setBackend(backend, threads, runtime) {
  if (backend === 'wasm') {
    // tfjs wants all three; one that is not available (not published: it was not the one measured) fails
    // loudly if tfjs picks it, and the loader moves on to the next candidate.
    const paths = {};
    for (const f of WASM_FILES) paths[f] = runtime.url(WASM_DIR + f) || `data:application/wasm,unavailable-${f}`;
    tf.wasm.setWasmPaths(paths);
    if (typeof tf.wasm.setThreadsCount === 'function') tf.wasm.setThreadsCount(Math.max(1, threads || 1));
  }
  const ok = await tf.setBackend(backend);
  if (!ok) throw new Error(`tfjs: backend ${backend} failed to initialise`);
  await tf.ready();
  if (tf.getBackend() !== backend) throw new Error(`tfjs: backend is ${tf.getBackend()}, wanted ${backend}`);
  details = {backend};
  if (backend === 'wasm') {
    details.wasmSimd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
    details.wasmMultithread = await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT');
    details.wasmThreads = typeof tf.wasm.getThreadsCount === 'function' ? tf.wasm.getThreadsCount() : null;
  }
  if (backend === 'webgpu') runtime.lib.watchGpuDevice(tf.backend().device);
  if (backend === 'webgl') {
    details.webglVersion = tf.env().getNumber('WEBGL_VERSION');
    details.webglFloat32 = tf.env().getBool('WEBGL_RENDER_FLOAT32_ENABLED');
  }
}

export async function load({files, target, threads, runtime}) {
  const backend = BACKEND_FOR_TARGET[target];
  if (!backend) throw new Error(`tfjs: does not run on target ${target}`);
  await importTf(backend, runtime);
  backendUsed = backend;
  await setBackend(backend, threads, runtime);
  const [entry] = files;
  const all = byName(files);
  const decoder = new TextDecoder();
  const modelJson = JSON.parse(decoder.decode(entry.data));
  const mData = all.get(MANIFEST);
  if (!mData) throw new Error(`tfjs: ${MANIFEST} missing from the model files`);
  manifest = JSON.parse(decoder.decode(mData));
  model = await tf.loadGraphModel(memoryHandler(modelJson, all));
  const inNames = model.inputs.map((t) => t.name);
  const outNames = model.outputs.map((t) => t.name);
  inputMap = manifest.inputs.map((e) => ({name: e.name, key: resolveName(e, inNames, 'input'), dtype: e.dtype}));
  outputMap = manifest.outputs.map((e) => ({name: e.name, key: resolveName(e, outNames, 'output')}));
  useAsync = false;
  lib = runtime.lib;
  const isStatic = manifest.inputs.every((e) => 'batch_axis' in e && Array.isArray(e.shape)
                                               && e.shape.every((d) => Number.isInteger(d)));
  staticInputs = isStatic ? manifest.inputs.map((e) => ({name: e.name, shape: e.shape, batchAxis: e.batch_axis,
                                                         pad: e.pad ?? null})) : null;
  staticOutputs = isStatic ? manifest.outputs.map((e) => ({name: e.name, batchAxis: e.batch_axis ?? 0})) : null;
  return {info: {inputNames: inNames, outputNames: outNames, backend: tf.getBackend(),
                 quantization: manifest.quantization, ...details}};
}

function toTensor(feed, want) {
  let data = feed.data;
  let dtype = feed.dtype;
  // tfjs has no int64/float64 tensors: narrow explicitly (the recipe's dtype says what the graph takes).
  if (dtype === 'int64' || dtype === 'uint64') { data = Int32Array.from(data, Number); dtype = 'int32'; }
  else if (dtype === 'float64') { data = Float32Array.from(data); dtype = 'float32'; }
  else if (dtype === 'float16') throw new Error('tfjs: float16 inputs are not supported');
  if (want === 'int32' && dtype !== 'int32') { data = Int32Array.from(data); dtype = 'int32'; }
  return tf.tensor(data, feed.dims, dtype === 'uint8' || dtype === 'int8' || dtype === 'int16' ||
                   dtype === 'uint16' || dtype === 'uint32' ? 'int32' : dtype);
}

export async function run(feeds) {
  // A graph converted at static shapes (the manifest says where each batch is): other batches, and inputs the
  // recipe lets be padded up to the converted shape, go through adapter.js runStatic.
  if (staticInputs) return lib.runStatic(feeds, staticInputs, staticOutputs, runOnce, 'tfjs');
  return runOnce(feeds);
}

async function runOnce(feeds) {
  const inputs = {};
  let outs = [];
  try {
    for (const m of inputMap) {
      const f = feeds[m.name];
      if (!f) throw new Error(`tfjs: feed ${m.name} missing (got ${Object.keys(feeds)})`);
      inputs[m.key] = toTensor(f, m.dtype);
    }
    const names = outputMap.map((m) => m.key);
    if (!useAsync) {
      try {
        outs = model.execute(inputs, names);
      } catch (e) {
        // Graphs with control flow / dynamic shapes need executeAsync; remember it for later runs.
        if (!/executeAsync/.test(String(e && e.message))) throw e;
        useAsync = true;
      }
    }
    if (useAsync) outs = await model.executeAsync(inputs, names);
    if (!Array.isArray(outs)) outs = [outs];
    const result = {};
    for (let i = 0; i < outputMap.length; i++) {
      const t = outs[i];
      result[outputMap[i].name] = {data: await t.data(), dims: [...t.shape], dtype: t.dtype === 'bool' ? 'bool' : t.dtype};
    }
    return result;
  } finally {
    for (const t of Object.values(inputs)) t.dispose();
    for (const t of outs) if (t && !t.isDisposed) t.dispose();
  }
}

export async function release() {
  if (model) model.dispose();
  model = null;
}

export function env() {
  return {
    runtime: 'tfjs',
    version: tf ? tf.version && tf.version.tfjs : null,
    backend: tf ? tf.getBackend() : backendUsed,
    bundle: [CORE, BACKENDS[backendUsed]].filter(Boolean),
    executeAsync: useAsync,
    numTensors: tf ? tf.memory().numTensors : null,
    ...details,
  };
}
