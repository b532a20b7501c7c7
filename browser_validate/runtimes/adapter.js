// The runtime adapter interface, and the pieces every adapter shares.
//
// Every runtime file next to this one (ort.js, tfjs.js, tvm.js, ...) is an ES module implementing `Adapter`.
// The measuring page (page/bench.js, page/worker.js) and the web app's loader (web/loader/) call the same
// adapters through this one interface: what ships is what was measured.
//
// Adapters are self-contained modules: they import nothing. Where the runtime's own files are (its JS bundles
// and wasm) and the shared helpers below come in through `load({runtime})`, so the page can serve them from
// its mounts and the loader from integrity-checked, cached copies (blob URLs) of the registry's files.
//
// A *target* is what a web app can count on in a visitor's browser ('wasm', 'webgpu', 'webgl'). Each adapter
// maps a target onto its runtime's own backend (ORT execution provider, tfjs setBackend name, TVM device).
// Which targets a runtime runs on is said in one place only: RUNTIMES in runtimes/__init__.py.
// Works in a page and in a (module) Web Worker.

/**
 * @typedef {Float32Array|Float64Array|Int8Array|Uint8Array|Int16Array|Uint16Array|Int32Array|Uint32Array|
 *           BigInt64Array|BigUint64Array} TypedArray
 *
 * @typedef {object} Tensor
 * @property {TypedArray} data   row-major; float16 travels as raw Uint16Array bits, bool as Uint8Array
 * @property {number[]} dims
 * @property {string} dtype      a key of TYPED
 *
 * @typedef {object} ModelFile
 * @property {string} name       file name as converted (the entry file comes first)
 * @property {ArrayBuffer} data
 *
 * @typedef {object} RuntimeEnv
 * @property {(name: string) => (string|undefined)} url   where the runtime file `name` can be loaded from, by its
 *           path as served to the measuring page and published in the registry bundle ('ort/ort.wasm.min.mjs');
 *           undefined when that file is not available
 * @property {{TYPED: object, watchGpuDevice: function, runStatic: function}} lib   this module's helpers
 *
 * @typedef {object} Adapter
 * @property {(opts: {files: ModelFile[], target: string, threads: number, runtime: RuntimeEnv}) =>
 *           Promise<{info: object}>} load
 *           create the session for `target`; `info` goes into the report (input/output names, ...)
 * @property {(feeds: Object<string, Tensor>) => Promise<Object<string, Tensor>>} run
 *           one inference; feeds and outputs keyed by the model's (recipe's) names
 * @property {() => Promise<void>} release   free the session (and its GPU resources)
 * @property {() => object} env              runtime details for the report (version, its own backend, threads, ...)
 * @property {(opts: {files: ModelFile[], target: string, threads: number, runtime: RuntimeEnv}) => Promise<void>}
 *           [placement]  optional, measuring page only: make the runtime log which of its backends took which node
 *           (a second session, created after every measurement; the page reads the log)
 */

/** dtype name -> TypedArray constructor: how tensors cross between files, the page and adapters. */
export const TYPED = {
  float32: Float32Array, float64: Float64Array, float16: Uint16Array,
  int8: Int8Array, uint8: Uint8Array, bool: Uint8Array,
  int16: Int16Array, uint16: Uint16Array, int32: Int32Array, uint32: Uint32Array,
  int64: BigInt64Array, uint64: BigUint64Array,
};

/**
 * Put a WebGPU device's errors on the console. Runtimes do not surface validation errors or device loss
 * themselves, so a broken shader would otherwise be a silent wrong result; the harness counts these
 * console lines as failures.
 * @param {GPUDevice} device
 */
export function watchGpuDevice(device) {
  if (!device || !device.addEventListener) return;
  device.addEventListener('uncapturederror', (e) =>
    console.error(`GPUValidationError (uncaptured): ${e.error && e.error.message}`));
  // 'destroyed' is the adapter's own release(); any other loss invalidates results.
  if (device.lost) {
    device.lost.then((l) => {
      if (l.reason !== 'destroyed') console.error(`GPU device lost: ${l.reason} ${l.message}`);
    });
  }
}

// ------------------------------------------------------------------------------- static-shape models
// Runtimes that compile for fixed shapes (TVM, LiteRT.js, a TF.js graph converted at fixed shapes) run a feed of
// another shape here, the one place that knows how: a batch the model does not take is split into model-batch
// slices run one after another (rows are independent in inference models), and an input the recipe lets be
// padded (`pad: 'zero'`, from its compile_pad) that is smaller than the compiled shape is zero-padded up to it,
// as the recipe's preprocessing pads a short text line. Outputs come back as the model gives them: a padded
// input's sequence output is as long as the compiled shape makes it (the app decodes it whole; the evaluation
// compares the positions native has, and what a reader sees: the decoded text).

function sliceAlong(t, axis, start, count) {
  const dims = t.dims;
  const outer = dims.slice(0, axis).reduce((a, b) => a * b, 1);
  const inner = dims.slice(axis + 1).reduce((a, b) => a * b, 1);
  const data = new t.data.constructor(outer * count * inner);
  for (let o = 0; o < outer; o++) {
    const src = (o * dims[axis] + start) * inner;
    data.set(t.data.subarray(src, src + count * inner), o * count * inner);
  }
  const out = [...dims];
  out[axis] = count;
  return {data, dims: out, dtype: t.dtype};
}

function concatAlong(parts, axis) {
  const dims = [...parts[0].dims];
  dims[axis] = parts.reduce((a, p) => a + p.dims[axis], 0);
  const outer = dims.slice(0, axis).reduce((a, b) => a * b, 1);
  const inner = dims.slice(axis + 1).reduce((a, b) => a * b, 1);
  const data = new parts[0].data.constructor(outer * dims[axis] * inner);
  let off = 0;
  for (let o = 0; o < outer; o++) {
    for (const p of parts) {
      const n = p.dims[axis] * inner;
      data.set(p.data.subarray(o * n, (o + 1) * n), off);
      off += n;
    }
  }
  return {data, dims, dtype: parts[0].dtype};
}

/** `t` zero-padded at the end of each axis up to `dims` (every axis of `t` at most as long). */
function padTo(t, dims) {
  const size = dims.reduce((a, b) => a * b, 1);
  const data = new t.data.constructor(size);  // zeros
  const rank = dims.length;
  const row = t.dims[rank - 1] ?? 1;
  const rows = t.data.length / Math.max(row, 1);
  const idx = new Array(rank - 1).fill(0);
  for (let r = 0; r < rows; r++) {
    let dst = 0;
    for (let k = 0; k < rank - 1; k++) dst = (dst + idx[k]) * dims[k + 1];
    data.set(t.data.subarray(r * row, (r + 1) * row), dst);
    for (let k = rank - 2; k >= 0; k--) {  // next row index, last axis fastest
      if (++idx[k] < t.dims[k]) break;
      idx[k] = 0;
    }
  }
  return {data, dims: [...dims], dtype: t.dtype};
}

const sameDims = (a, b) => a.length === b.length && a.every((d, k) => d === b[k]);

/**
 * Run a static-shape model on feeds of other shapes.
 * @param {Object<string, Tensor>} feeds
 * @param {{name: string, shape: number[], batchAxis: (number|null), pad: (string|null)}[]} inputs  compiled shapes
 * @param {{name: string, batchAxis: (number|null)}[]} outputs
 * @param {(feeds: Object<string, Tensor>) => Promise<Object<string, Tensor>>} runOnce  one call, compiled shapes
 * @param {string} who  the runtime, for errors
 * @returns {Promise<Object<string, Tensor>>}
 */
export async function runStatic(feeds, inputs, outputs, runOnce, who) {
  for (const s of inputs) if (!feeds[s.name]) throw new Error(`${who}: feed ${s.name} missing (got ${Object.keys(feeds)})`);
  if (inputs.every((s) => sameDims(feeds[s.name].dims, s.shape))) return runOnce(feeds);
  const fit = (f, s) => {
    if (sameDims(f.dims, s.shape)) return f;
    if (s.pad === 'zero' && f.dims.length === s.shape.length && f.dims.every((d, k) => d <= s.shape[k])) {
      return padTo(f, s.shape);
    }
    throw new Error(`${who}: input ${s.name} has shape [${f.dims}], the model was compiled for [${s.shape}] (static `
      + 'shapes: the recipe\'s compile_shape sets them' + (s.pad ? ', and a smaller input is padded up to it)' : ')'));
  };
  const batchedOn = (a) => a !== null && a !== undefined;  // a batch axis (manifests say null where there is none)
  const first = inputs.find((s) => batchedOn(s.batchAxis));
  const n = first ? feeds[first.name].dims[first.batchAxis] : 1;
  const b = first ? first.shape[first.batchAxis] : 1;
  if (!first || n === b) return runOnce(Object.fromEntries(inputs.map((s) => [s.name, fit(feeds[s.name], s)])));
  if (!b || n % b !== 0) throw new Error(`${who}: batch ${n} is not a multiple of the compiled batch ${b}`);
  const parts = [];
  for (let i = 0; i < n; i += b) {
    const slice = {};
    for (const s of inputs) {
      const f = feeds[s.name];
      slice[s.name] = fit(batchedOn(s.batchAxis) ? sliceAlong(f, s.batchAxis, i, b) : f, s);
    }
    parts.push(await runOnce(slice));
  }
  const out = {};
  for (const o of outputs) {
    const pieces = parts.map((p) => p[o.name]);
    out[o.name] = batchedOn(o.batchAxis) ? concatAlong(pieces, o.batchAxis) : pieces[pieces.length - 1];
  }
  return out;
}

/**
 * Whether this browser offers `target`, before any runtime is loaded.
 * @param {string} target
 * @returns {Promise<{available: boolean, features: string[], info: object, reason?: string}>}
 */
export async function probeTarget(target) {
  if (target === 'webgpu') {
    if (!navigator.gpu) return {available: false, features: [], info: {}, reason: 'navigator.gpu missing'};
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return {available: false, features: [], info: {}, reason: 'requestAdapter() returned null'};
    const i = adapter.info || {};
    return {
      available: true,
      features: [...adapter.features].sort(),  // e.g. 'shader-f16', which fp16 models need
      info: {vendor: i.vendor, architecture: i.architecture, device: i.device, description: i.description,
             isFallbackAdapter: i.isFallbackAdapter},
    };
  }
  if (target === 'wasm') {
    return {available: typeof WebAssembly === 'object', features: wasmFeatures(),
            info: {crossOriginIsolated: self.crossOriginIsolated}};
  }
  if (target === 'webgl') {
    const canvas = typeof document !== 'undefined' ? document.createElement('canvas')
      : (typeof OffscreenCanvas !== 'undefined' ? new OffscreenCanvas(1, 1) : null);
    const gl = canvas && canvas.getContext('webgl2');
    return {available: !!gl, features: [], info: gl ? {renderer: gl.getParameter(gl.RENDERER)} : {},
            reason: gl ? undefined : 'no WebGL2 context'};
  }
  return {available: false, features: [], info: {}, reason: `unknown target ${target}`};
}

/**
 * The RuntimeEnv of a page that serves the runtime files under their bundle names below `base` (the measuring
 * page serves them from its origin's root, as published in a registry bundle).
 * @param {string} [base]
 * @returns {RuntimeEnv}
 */
export function servedRuntime(base = '/') {
  return {url: (name) => base + name, lib: {TYPED, watchGpuDevice, runStatic}};
}

// A minimal module using a v128 instruction: WebAssembly.validate() says whether this engine has wasm SIMD.
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0,
  65, 0, 253, 15, 253, 98, 11]);
// ... and one using i8x16.relaxed_swizzle (0xfd 0x100): relaxed SIMD, which LiteRT.js's wasm builds need.
const RELAXED_SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 43,
  1, 41, 0, 253, 12, ...new Array(16).fill(0), 253, 12, ...new Array(16).fill(0), 253, 128, 2, 11]);

/**
 * What this browser can run, by capability rather than by presence: a WebGPU adapter is requested and its
 * features and fallback (software) status read; WebGL2 gets a context; wasm SIMD is validated on a tiny module;
 * wasm threads need cross-origin isolation and SharedArrayBuffer. `features` uses the registry's vocabulary
 * (required_features): wasm, wasm-simd, wasm-relaxed-simd, wasm-jspi, wasm-threads, webgpu, shader-f16, webgl2.
 * @returns {Promise<{features: string[], webgpu: object|null, webgl: object|null, crossOriginIsolated: boolean}>}
 */
export async function probeCapabilities() {
  const features = [];
  let webgpu = null;
  if (typeof navigator !== 'undefined' && navigator.gpu) {
    try {
      const adapter = await navigator.gpu.requestAdapter();
      if (adapter) {
        const i = adapter.info || {};
        webgpu = {vendor: i.vendor, architecture: i.architecture, description: i.description,
                  isFallbackAdapter: Boolean(i.isFallbackAdapter ?? adapter.isFallbackAdapter),
                  features: [...adapter.features].sort()};
        features.push('webgpu');
        if (adapter.features.has('shader-f16')) features.push('shader-f16');
      }
    } catch (e) {
      webgpu = {error: String(e && e.message || e)};
    }
  }
  let webgl = null;
  const canvas = typeof document !== 'undefined' ? document.createElement('canvas')
    : (typeof OffscreenCanvas !== 'undefined' ? new OffscreenCanvas(1, 1) : null);
  const gl = canvas && canvas.getContext('webgl2');
  if (gl) {
    webgl = {renderer: gl.getParameter(gl.RENDERER)};
    features.push('webgl2');
  }
  features.push(...wasmFeatures());
  return {features, webgpu, webgl, crossOriginIsolated: Boolean(self.crossOriginIsolated)};
}

/** The wasm features this engine and page offer: wasm, wasm-simd, wasm-threads (registry vocabulary). */
function wasmFeatures() {
  if (typeof WebAssembly !== 'object') return [];
  const features = ['wasm'];
  if (WebAssembly.validate(SIMD_PROBE)) features.push('wasm-simd');
  if (WebAssembly.validate(RELAXED_SIMD_PROBE)) features.push('wasm-relaxed-simd');
  if ('Suspending' in WebAssembly) features.push('wasm-jspi');  // JS promise integration
  if (self.crossOriginIsolated && typeof SharedArrayBuffer !== 'undefined') features.push('wasm-threads');
  return features;
}
