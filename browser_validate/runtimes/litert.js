// LiteRT.js adapter (npm @litertjs/core; .tflite models written by pipeline/families/litert): implements the Adapter
// interface of adapter.js. Each target maps onto the LiteRT.js accelerator of the same name ('wasm': XNNPACK on
// the CPU, 'webgpu': LiteRT's GPU delegate on WebGPU).
//
// files = [{name, data: ArrayBuffer}] with model.tflite first, then litert_manifest.json, which maps the recipe's
// input/output names onto the model's signature names and says on which axis each carries the batch.
//
// Loading, as @litertjs/core 2.5.3 does it (its dist/index.js, src/load.ts + @litertjs/wasm-utils):
// - dist/index.js is an ES module that imports the bare specifier "@litertjs/wasm-utils", which neither a page
//   without an import map nor a Worker can resolve: the adapter fetches it from `runtime.url`, points that import
//   at wasm-utils' own file (also from `runtime.url`) and imports the result from a blob URL. The code is the
//   package's, byte for byte, but for that one specifier (and its source-map comment).
// - loadLiteRt(file) runs one of four Emscripten classic scripts (wasm/litert_wasm_*_internal.js) through a
//   <script> tag, or importScripts() in a Worker, and passes `self.Module` to its factory: the adapter sets
//   Module.locateFile so the .wasm comes from `runtime.url` too, and Module.mainScriptUrlOrBlob so the threaded
//   build's pthread Workers start from the same script. The file is chosen here, as LiteRT.js would choose it:
//   relaxed SIMD + threads > 1 -> threaded build (needs cross-origin isolation), relaxed SIMD -> the plain build,
//   neither -> the compat build. A file that is not available (not measured, hence not published) fails loudly.
// - A module Worker has no importScripts() (it throws): there the adapter lends one that fetches the script
//   synchronously and evaluates it globally, which is what importScripts() does in a classic Worker.
// - loadLiteRt() also creates LiteRT's default WebGPU device whenever navigator.gpu exists, whatever the target:
//   that is the library's behaviour, so it is measured (env.webGpuDevice says whether it exists).
// Shapes: the converter fixes a dynamic batch at 1 (and other dynamic dimensions at the recipe's compile_shape), and
// LiteRT.js cannot resize inputs: a feed of another batch, or smaller where the recipe allows padding (the
// manifest's batch_axis and pad), runs through adapter.js runStatic.

const CORE = 'litert/core/dist/index.js';
const CORE_PACKAGE = 'litert/core/package.json';
const WASM_UTILS = 'litert/wasm-utils/dist/index.js';
const WASM_DIR = 'litert/core/wasm/';
const BUILDS = {
  plain: 'litert_wasm_internal',        // relaxed SIMD, one thread
  threaded: 'litert_wasm_threaded_internal',  // relaxed SIMD + pthreads (SharedArrayBuffer: cross-origin isolated)
  compat: 'litert_wasm_compat_internal',  // no relaxed SIMD
  // JSPI (WebAssembly.Suspending): what LiteRT.js needs to run a model partly on WebGPU and partly on wasm. Where
  // JSPI exists LiteRT.js partitions a model its WebGPU delegate cannot take whole, and only this build can run
  // that ("Asyncify is not defined" from the others); so WebGPU loads it.
  jspi: 'litert_wasm_jspi_internal',
};
const ACCELERATOR_FOR_TARGET = {wasm: 'wasm', webgpu: 'webgpu'};
const MANIFEST = 'litert_manifest.json';
// LiteRT.js Tensor dtypes (its DATATYPES): what a feed is converted to.
const LITERT_TYPED = {float32: Float32Array, int32: Int32Array, uint8: Uint8Array};

let litert = null;       // the @litertjs/core module
let version = null;
let buildUsed = null;    // key of BUILDS loaded into this global scope
let model = null;        // CompiledModel
let manifest = null;
let targetUsed = null;
let threadsAsked = null;
let inputs = [];         // [{name (recipe), key (signature name), dtype, shape, batchAxis}]
let outputs = [];        // [{name (recipe), key (signature name), batchAxis}]
let details = {};
let lib = null;          // adapter.js's helpers, from load({runtime})

const absolute = (url) => new URL(url, self.location.href).href;

function need(runtime, name) {
  const url = runtime.url(name);
  if (!url) throw new Error(`litert: runtime file ${name} is not available`);
  return absolute(url);
}

async function importCore(runtime) {
  if (litert) return litert;
  const coreUrl = need(runtime, CORE);
  const utilsUrl = need(runtime, WASM_UTILS);
  const res = await fetch(coreUrl);
  if (!res.ok) throw new Error(`litert: ${CORE}: HTTP ${res.status}`);
  const src = await res.text();
  const bare = /from\s*["']@litertjs\/wasm-utils["']/g;
  if (!src.match(bare)) throw new Error(`litert: ${CORE} does not import @litertjs/wasm-utils as expected`);
  const patched = src.replace(bare, `from ${JSON.stringify(utilsUrl)}`).replace(/^\/\/# sourceMappingURL=.*$/m, '');
  const blobUrl = URL.createObjectURL(new Blob([patched], {type: 'text/javascript'}));
  try {
    litert = await import(blobUrl);
  } finally {
    URL.revokeObjectURL(blobUrl);
  }
  try {
    const pkg = runtime.url(CORE_PACKAGE);
    if (pkg) version = (await (await fetch(pkg)).json()).version || null;
  } catch (e) { /* the version is informative only */ }
  return litert;
}

// LiteRT's C++ log goes to stderr, which Emscripten prints with console.error whatever its severity ("INFO: [...]
// Creating LiteRT environment"): each line goes to the console method of its own severity, so only real errors
// count as the page's errors.
function logLine(text) {
  const line = String(text);
  if (/^(INFO|VERBOSE|DEBUG)\b|^I\d{4} /.test(line)) console.info(line);  // LiteRT's own, or absl's "I1126 ..."
  else if (/^WARNING\b|^W\d{4} /.test(line)) console.warn(line);
  // The GPU delegate's list of ops it leaves to the CPU (logged as ERROR, then partitioned, not failed): a
  // warning; env.fullyAccelerated records it (and the report's CPU fallback column).
  else if (/^ERROR: Following operations are not supported by GPU delegate|^[A-Z0-9_]+: (Not supported op|Operation is not supported)|operations will run on the (GPU|CPU)/.test(line)) {
    console.warn(line);
  }
  else console.error(line);
}

// importScripts() for a module Worker (where the real one throws): synchronous fetch, global evaluation.
function lendImportScripts() {
  if (typeof document !== 'undefined' || typeof importScripts !== 'function') return null;
  try {
    importScripts();  // a classic Worker: a no-op
    return null;
  } catch (e) { /* a module Worker */ }
  const own = Object.getOwnPropertyDescriptor(self, 'importScripts');
  self.importScripts = (...urls) => {
    for (const url of urls) {
      const xhr = new XMLHttpRequest();
      xhr.open('GET', String(url), false);
      xhr.send();
      if (xhr.status !== 200) throw new Error(`litert: ${url}: HTTP ${xhr.status}`);
      (0, eval)(`${xhr.responseText}\n//# sourceURL=${url}`);
    }
  };
  return () => { if (own) Object.defineProperty(self, 'importScripts', own); else delete self.importScripts; };
}

async function loadRuntime(threads, runtime, target) {
  const relaxedSimd = await litert.supportsFeature('relaxedSimd');
  let build = relaxedSimd ? 'plain' : 'compat';
  if (target === 'webgpu' && 'Suspending' in WebAssembly) {
    build = 'jspi';
  } else if (threads > 1) {
    if (!relaxedSimd) throw new Error('litert: threads need relaxed SIMD (LiteRT.js has no threaded build without it)');
    if (!self.crossOriginIsolated) throw new Error('litert: threads need a cross-origin isolated page (COOP/COEP)');
    build = 'threaded';
  }
  if (buildUsed === build && litert.getGlobalLiteRtPromise()) {
    await litert.getGlobalLiteRtPromise();
    return;
  }
  if (litert.getGlobalLiteRtPromise()) litert.unloadLiteRt();  // another build: start again
  const js = need(runtime, `${WASM_DIR}${BUILDS[build]}.js`);
  const wasm = need(runtime, `${WASM_DIR}${BUILDS[build]}.wasm`);
  // Handed to the Emscripten factory by @litertjs/wasm-utils (createWasmLib: ModuleFactory(self.Module)).
  self.Module = {locateFile: (f) => (f === `${BUILDS[build]}.wasm` ? wasm : need(runtime, WASM_DIR + f)),
                 mainScriptUrlOrBlob: js, printErr: logLine};
  const restore = lendImportScripts();
  try {
    // A full file path: LiteRT.js loads exactly that build (its `threads` option only chooses among a folder's).
    // It tells a file from a folder by the ending '.js': a blob URL (the loader's verified copies) gets the file
    // name as a fragment, which fetching ignores.
    await litert.loadLiteRt(js.endsWith('.js') ? js : `${js}#${BUILDS[build]}.js`);
  } finally {
    if (restore) restore();
    self.Module = undefined;
  }
  buildUsed = build;
}

function details_(list) {
  return list.map((d) => ({name: d.name, dtype: d.dtype, shape: [...d.shape]}));
}

export async function load({files, target, threads, runtime}) {
  const accelerator = ACCELERATOR_FOR_TARGET[target];
  if (!accelerator) throw new Error(`litert: does not run on target ${target}`);
  threads = Math.max(1, threads || 1);
  lib = runtime.lib;
  await importCore(runtime);
  await loadRuntime(threads, runtime, target);
  targetUsed = target;
  threadsAsked = threads;
  const [entry, ...rest] = files;
  const m = rest.find((f) => f.name === MANIFEST);
  if (!m) throw new Error(`litert: ${MANIFEST} missing from the model files`);
  manifest = JSON.parse(new TextDecoder().decode(m.data));
  if (accelerator === 'webgpu') {
    const device = litert.getWebGpuDevice();
    if (!device) throw new Error('litert: no WebGPU device (LiteRT.js could not create its default device)');
    runtime.lib.watchGpuDevice(device);
  }
  model = await litert.loadAndCompile(new Uint8Array(entry.data), {accelerator, cpuOptions: {numThreads: threads}});
  const ran = model.options.accelerator;
  const full = model.isFullyAccelerated;
  if (ran !== accelerator) {
    const why = `litert: the model was not compiled for ${accelerator}: LiteRT.js fell back to ${ran}` +
                (accelerator === 'webgpu' ? ' (an op its WebGPU delegate does not support)' : '');
    model.delete();
    model = null;
    throw new Error(why);
  }
  const inDetails = model.getInputDetails();
  const outDetails = model.getOutputDetails();
  const byName = (list, e, what) => {
    const d = list.find((x) => x.name === e.signature_key) || list.find((x) => x.name === e.name);
    if (!d) throw new Error(`litert: ${what} ${e.name} (${e.signature_key}) not in the model's ${what}s [${list.map((x) => x.name)}]`);
    return d;
  };
  inputs = manifest.inputs.map((e) => {
    const d = byName(inDetails, e, 'input');
    return {name: e.name, key: d.name, dtype: d.dtype, shape: [...d.shape], batchAxis: e.batch_axis ?? null,
            pad: e.pad ?? null};
  });
  outputs = manifest.outputs.map((e) => ({name: e.name, key: byName(outDetails, e, 'output').name,
                                          batchAxis: e.batch_axis ?? null}));
  const wasmLib = litert.getGlobalLiteRt().liteRtWasm;
  details = {accelerator: ran, fullyAccelerated: full, build: BUILDS[buildUsed], relaxedSimd: buildUsed !== 'compat',
             crossOriginIsolated: Boolean(self.crossOriginIsolated), wasmThreads: model.options.cpuOptions.numThreads,
             wasmThreadPool: wasmLib.getThreadCount(), webGpuDevice: Boolean(litert.getWebGpuDevice())};
  return {info: {inputNames: inDetails.map((d) => d.name), outputNames: outDetails.map((d) => d.name),
                 inputs: details_(inDetails), outputs: details_(outDetails), quantization: manifest.quantization,
                 ...details}};
}

function toTensor(feed, spec) {
  const Typed = LITERT_TYPED[spec.dtype];
  if (!Typed) throw new Error(`litert: input ${spec.name} has dtype ${spec.dtype}, which LiteRT.js tensors do not take`);
  const data = feed.data instanceof Typed ? feed.data
    : Typed.from(feed.data, (v) => (typeof v === 'bigint' ? Number(v) : v));
  return new litert.Tensor(data, [...feed.dims]);
}

async function runOnce(feeds) {
  const made = {};
  let res = null;
  try {
    for (const spec of inputs) {
      const f = feeds[spec.name];
      if (!f) throw new Error(`litert: feed ${spec.name} missing (got ${Object.keys(feeds)})`);
      made[spec.key] = toTensor(f, spec);
    }
    res = await model.run(made);
    const out = {};
    for (const o of outputs) {
      const t = res[o.key];
      if (!t) throw new Error(`litert: output ${o.key} missing (got ${Object.keys(res)})`);
      const data = await t.data();  // copies a WebGPU tensor back to the CPU first
      out[o.name] = {data: data.slice(), dims: [...t.type.layout.dimensions], dtype: t.type.dtype};
    }
    return out;
  } finally {
    for (const t of Object.values(made)) t.delete();
    if (res) for (const t of Object.values(res)) t.delete();
  }
}

export async function run(feeds) {
  // Other batches, and inputs the recipe lets be padded up to the converted shape: adapter.js runStatic.
  return lib.runStatic(feeds, inputs, outputs, runOnce, 'litert');
}

export async function release() {
  if (model) model.delete();
  model = null;
}

export function env() {
  return {
    runtime: 'litert',
    package: '@litertjs/core',
    version,
    backend: details.accelerator || ACCELERATOR_FOR_TARGET[targetUsed] || null,  // the LiteRT.js accelerator that ran
    threads: threadsAsked,
    ...details,
  };
}
