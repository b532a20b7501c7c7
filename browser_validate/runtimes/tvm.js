// Apache TVM adapter on top of npm @mlc-ai/web-runtime (tvmjs): implements the Adapter interface of adapter.js.
// A module is compiled for one target; TVM runs it on the matching device (wasm: cpu, webgpu: webgpu).
//
// Artifacts (pipeline/families/tvm/compile.py, compile_onnx) arrive entry first:
//   model.wasm       the Relax VM executable + kernels linked with the TVM web runtime (emcc)
//   tvm_meta.json    input/output names, compiled shapes and dtypes, parameter layout
//   params.bin       (only for builds with separate weights) raw little-endian tensors, see meta.params
//
// Shapes: modules are compiled with static shapes (batch as compiled, normally 1; the recipe's compile_shape). A
// feed of another batch, or smaller where the recipe allows padding (tvm_meta.json inputs[].pad), runs through
// adapter.js runStatic.

const TVMJS = 'tvmjs/index.js';  // UMD bundle: importing it defines globalThis.tvmjs
const DEVICE_FOR_TARGET = {wasm: 'cpu', webgpu: 'webgpu'};

let tvmjs = null;
let inst = null;       // tvmjs.Instance
let dev = null;        // DLDevice the VM runs on
let vm = null;
let mainFn = null;
let meta = null;
let params = [];       // device tensors passed after the inputs (separate-weights builds)
let targetUsed = null;
let gpuInfo = null;
let typedArrays = null;  // adapter.js's dtype table (TYPED), from load({runtime})
let lib = null;          // adapter.js's helpers, from load({runtime})

async function importTvmjs(runtime) {
  if (!globalThis.tvmjs) await import(runtime.url(TVMJS));
  if (!globalThis.tvmjs) throw new Error(`tvm: ${TVMJS} did not define tvmjs`);
  return globalThis.tvmjs;
}

function byName(files, name) {
  const f = files.find((x) => x.name === name);
  return f ? f.data : null;
}

function bytesOf(typed) {
  return new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
}

function toTyped(bytes, dtype) {
  const Typed = typedArrays[dtype];
  if (!Typed) throw new Error(`tvm: unsupported dtype ${dtype}`);
  // toRawBytes() returns a fresh copy; realign into its own buffer for the typed view.
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return new Typed(copy.buffer);
}

export async function load({files, target, runtime}) {
  lib = runtime.lib;
  typedArrays = lib.TYPED;
  if (!DEVICE_FOR_TARGET[target]) throw new Error(`tvm: does not run on target ${target}`);
  const [entry] = files;
  const metaBuf = byName(files, 'tvm_meta.json');
  if (!metaBuf) throw new Error('tvm: tvm_meta.json missing from the artifact');
  meta = JSON.parse(new TextDecoder().decode(metaBuf));
  if (meta.target !== target) throw new Error(`tvm: module compiled for ${meta.target}, asked to run on ${target}`);

  tvmjs = await importTvmjs(runtime);
  inst = await tvmjs.instantiate(entry.data, tvmjs.createPolyfillWASI(), (msg) => console.log(`[tvm] ${msg}`));
  targetUsed = target;
  if (target === 'webgpu') {
    const gpu = await tvmjs.detectGPUDevice();
    if (!gpu) throw new Error('tvm: detectGPUDevice() found no WebGPU device');
    gpuInfo = gpu.adapterInfo ? {vendor: gpu.adapterInfo.vendor, architecture: gpu.adapterInfo.architecture} : {};
    // initWebGPU logs uncaptured device errors with console.error: the harness counts them as failures.
    inst.initWebGPU(gpu.device);
    dev = inst.webgpu();
    inst.beginScope();  // systemLib() returns a TVM object: it needs a scope
    try {
      await inst.asyncLoadWebGPUPipelines(inst.systemLib());
    } finally {
      inst.endScope();
    }
  } else {
    dev = inst.cpu();
  }

  inst.beginScope();
  try {
    vm = inst.detachFromCurrentScope(inst.createVirtualMachine(dev));
    mainFn = inst.detachFromCurrentScope(vm.getFunction('main'));
    params = [];
    if (meta.params && meta.params.length) {
      const blob = byName(files, meta.params_file);
      if (!blob) throw new Error(`tvm: weights file ${meta.params_file} missing from the artifact`);
      for (const p of meta.params) {
        const t = inst.empty(p.shape, p.dtype, dev);
        t.copyFromRawBytes(new Uint8Array(blob, p.offset, p.nbytes));
        params.push(inst.detachFromCurrentScope(t));
      }
    }
  } finally {
    inst.endScope();
  }
  if (target === 'webgpu') await dev.sync();
  return {info: {inputNames: meta.inputs.map((i) => i.name), outputNames: meta.outputs.map((o) => o.name),
                 compiledBatch: meta.batch, weights: meta.weights}};
}

// One call of the compiled function on exactly the compiled shapes.
async function runOnce(feeds) {
  inst.beginScope();
  try {
    const args = meta.inputs.map((spec) => {
      const f = feeds[spec.name];
      if (!f) throw new Error(`tvm: missing input ${spec.name}`);
      if (f.dtype !== spec.dtype) throw new Error(`tvm: input ${spec.name} is ${f.dtype}, compiled for ${spec.dtype}`);
      if (f.dims.length !== spec.shape.length || f.dims.some((d, k) => d !== spec.shape[k])) {
        throw new Error(`tvm: input ${spec.name} has shape [${f.dims}], the module was compiled for [${spec.shape}] `
          + '(TVM modules have static shapes: the recipe\'s compile_shape sets them)');
      }
      const t = inst.empty(spec.shape, spec.dtype, dev);
      t.copyFromRawBytes(bytesOf(f.data));
      return t;
    });
    let ret = mainFn(...args, ...params);
    const outs = meta.outputs.length === 1 && !(ret && typeof ret.size === 'function') ? [ret] : [];
    if (!outs.length) for (let i = 0; i < ret.size(); i++) outs.push(ret.get(i));
    if (outs.length !== meta.outputs.length) {
      throw new Error(`tvm: main returned ${outs.length} outputs, expected ${meta.outputs.length}`);
    }
    const host = outs.map((t) => (targetUsed === 'webgpu' ? inst.empty(t.shape, t.dtype, inst.cpu()).copyFrom(t) : t));
    if (targetUsed === 'webgpu') await dev.sync();
    const result = {};
    meta.outputs.forEach((spec, i) => {
      result[spec.name] = {data: toTyped(host[i].toRawBytes(), host[i].dtype), dims: [...host[i].shape], dtype: host[i].dtype};
    });
    return result;
  } finally {
    inst.endScope();
  }
}

export async function run(feeds) {
  // Another batch, or an input the recipe lets be padded up to the compiled shape: adapter.js runStatic.
  const batchAxis = meta.batch ? 0 : null;
  const inputs = meta.inputs.map((spec) => ({name: spec.name, shape: spec.shape, batchAxis, pad: spec.pad ?? null}));
  const outputs = meta.outputs.map((spec) => ({name: spec.name, batchAxis}));
  return lib.runStatic(feeds, inputs, outputs, runOnce, 'tvm');
}

export async function release() {
  if (!inst) return;
  for (const t of params) t.dispose();
  params = [];
  if (mainFn) mainFn.dispose();
  if (vm) vm.dispose();
  mainFn = vm = null;
  if (targetUsed === 'webgpu') inst.deviceLostIsError = false;  // our own teardown is not an error
  inst.dispose();
  inst = null;
}

export function env() {
  return {
    runtime: 'tvm',
    package: '@mlc-ai/web-runtime',
    device: DEVICE_FOR_TARGET[targetUsed] || null,  // TVM's own name for where the module runs
    compiledBatch: meta ? meta.batch : null,
    weights: meta ? meta.weights : null,
    tvmVersion: meta ? meta.tvm_version : null,
    gpu: gpuInfo,
    wasmThreads: 1,  // the TVM web runtime is single-threaded
  };
}
