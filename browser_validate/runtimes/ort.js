// ONNX Runtime Web adapter.
//
// Adapter interface shared by every runtime (tfjs, tvm, ... implement the same functions):
//   probe(backend)                      -> {available, features: [..], info: {..}, reason?}
//   load({files, backend, threads})     -> {info}     files[0] is the entry; files = [{name, data: ArrayBuffer}]
//   run(feeds)                          -> {name: {data: TypedArray, dims: [..], dtype: 'float32'|...}}
//   release()
//   env()                               -> runtime details for the report (version, threads used, ...)
// feeds are {name: {data: TypedArray, dims: [..], dtype}}.

// One bundle per backend, as a deployed app would import it: the wasm-only bundle is the
// smallest; the webgpu bundle ("onnxruntime-web/webgpu") carries its own wasm build.
import {probeBackend} from './probe.js';

const BUNDLES = {
  wasm: '/ort/ort.wasm.min.mjs',
  webgpu: '/ort/ort.webgpu.min.mjs',
  webgl: '/ort/ort.all.min.mjs',
};

let ort = null;
let session = null;
let backendUsed = null;

async function importOrt(backend) {
  const url = BUNDLES[backend];
  if (!url) throw new Error(`ort: unknown backend ${backend}`);
  ort = await import(url);
  // Resolve the .wasm/.mjs side files from our server, not relative to a CDN.
  ort.env.wasm.wasmPaths = '/ort/';
  ort.env.wasm.simd = true;  // only SIMD builds ship in 1.30; kept explicit for older pins
  ort.env.logLevel = 'warning';
  return ort;
}

export function probe(backend) {
  return probeBackend(backend, ['wasm', 'webgpu', 'webgl']);
}

export async function load({files, backend, threads}) {
  await importOrt(backend);
  ort.env.wasm.numThreads = threads;
  backendUsed = backend;
  const [entry, ...rest] = files;
  const options = {
    executionProviders: [backend],
    graphOptimizationLevel: 'all',
    // Extra files (e.g. model.onnx.data) are external weights referenced by relative path.
    externalData: rest.map((f) => ({path: f.name, data: new Uint8Array(f.data)})),
  };
  session = await ort.InferenceSession.create(new Uint8Array(entry.data), options);
  if (backend === 'webgpu') {
    // ORT does not surface WebGPU validation errors; put them on the console, where the
    // harness treats them as failures (otherwise they are silent wrong results).
    const device = await ort.env.webgpu.device;
    if (device && device.addEventListener) {
      device.addEventListener('uncapturederror', (e) =>
        console.error(`GPUValidationError (uncaptured): ${e.error && e.error.message}`));
      // 'destroyed' is our own session.release(); any other loss invalidates results.
      device.lost && device.lost.then((l) => {
        if (l.reason !== 'destroyed') console.error(`GPU device lost: ${l.reason} ${l.message}`);
      });
    }
  }
  return {info: {inputNames: session.inputNames, outputNames: session.outputNames}};
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
    bundle: BUNDLES[backendUsed],
    wasmThreads: ort ? ort.env.wasm.numThreads : null,
    backend: backendUsed,
  };
}
