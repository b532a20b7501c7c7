// Backend availability, shared by every runtime adapter. Works in a page and in a Web Worker.
// -> {available, features: [..], info: {..}, reason?}

export async function probeBackend(backend, supported) {
  if (!supported.includes(backend)) {
    return {available: false, features: [], info: {}, reason: `backend ${backend} not offered by this runtime`};
  }
  if (backend === 'webgpu') {
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
  if (backend === 'wasm') {
    return {available: typeof WebAssembly === 'object', features: [], info: {crossOriginIsolated: self.crossOriginIsolated}};
  }
  if (backend === 'webgl') {
    const canvas = typeof document !== 'undefined' ? document.createElement('canvas')
      : (typeof OffscreenCanvas !== 'undefined' ? new OffscreenCanvas(1, 1) : null);
    const gl = canvas && canvas.getContext('webgl2');
    return {available: !!gl, features: [], info: gl ? {renderer: gl.getParameter(gl.RENDERER)} : {},
            reason: gl ? undefined : 'no WebGL2 context'};
  }
  return {available: false, features: [], info: {}, reason: `unknown backend ${backend}`};
}
