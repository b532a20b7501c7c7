// The web app's side of the registry: load a released model and run exactly what was measured.
//
//   import {loadModel} from './web/loader/index.js';
//   const model = await loadModel({registry: 'https://cdn.example.com/models/', name: 'mobilenet_v2', alias: 'stable'});
//   const outputs = await model.run({input: {data: float32Array, dims: [1, 3, 224, 224], dtype: 'float32'}});
//   model.info      // target, runtime, variant, version, why it was chosen, what was skipped and why, timings
//   model.release()
//
// What it does, in order:
// 1. reads the registry's index.json (schema 2) and resolves the alias (or takes `version`);
// 2. probes what this browser can run (adapter.js probeCapabilities: a real WebGPU adapter and its features,
//    WebGL2, wasm SIMD validated on a tiny module, wasm threads = cross-origin isolation + SharedArrayBuffer);
// 3. walks the targets in order (default: hardware WebGPU, then wasm, then WebGL) and, per target, the index's
//    ranked candidates (`fallbacks`, the winner first), skipping those whose required features, isolation or
//    software-GPU rule the browser does not meet (each skip recorded with its reason);
// 4. for the first it can run: fetches every file (the runtime's adapter, JS and wasm as measured, then the model
//    files) with its Subresource Integrity, caches it in the Cache API keyed by sha256 (a new version that shares
//    files downloads only what changed), imports the runtime from integrity-checked blob URLs, creates the
//    session and runs a warm-up inference; if either fails, releases it, records why and tries the next one.
// An integrity failure is an error naming the file: never skipped, never cached.
//
// It uses the same adapter code (browser_validate/runtimes/*.js, from the registry's runtime bundle) and the
// same options as the measuring page. Works in a page and in a module Web Worker.

import {probeCapabilities} from '../../browser_validate/runtimes/adapter.js';

export {probeCapabilities};

export const DEFAULT_TARGETS = ['webgpu', 'wasm', 'webgl'];
const CACHE_NAME = 'browser-model-registry-v1';
const CACHE_KEY_BASE = 'https://browser-model-cache.invalid/sha256/';  // a key, never fetched

/** A file whose bytes are not the ones the registry recorded. */
export class IntegrityError extends Error {
  constructor(path, detail) {
    super(`integrity check failed for ${path}: ${detail}`);
    this.name = 'IntegrityError';
    this.path = path;
  }
}

/** Nothing in the registry can run in this browser (every skip and failure is in `info`). */
export class NoCandidateError extends Error {
  constructor(message, info) {
    super(message);
    this.name = 'NoCandidateError';
    this.info = info;
  }
}

function now() {
  return (typeof performance !== 'undefined' ? performance : Date).now();
}

async function sha256Hex(bytes) {
  const d = await crypto.subtle.digest('SHA-256', bytes);
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

async function sha384Sri(bytes) {
  const d = new Uint8Array(await crypto.subtle.digest('SHA-384', bytes));
  let s = '';
  for (const b of d) s += String.fromCharCode(b);
  return `sha384-${btoa(s)}`;
}

/** Fetches registry files by record ({path, sha256, bytes, integrity}), verified and cached by sha256. */
class FileStore {
  constructor(base, fetchImpl, useCache) {
    this.base = base;
    this.fetch = fetchImpl;
    this.useCache = useCache && typeof caches !== 'undefined';
    this.log = [];  // {path, from: 'cache'|'network', bytes}
    this.blobUrls = [];
  }

  async cache() {
    if (!this.useCache) return null;
    if (!this._cache) this._cache = await caches.open(CACHE_NAME);
    return this._cache;
  }

  /** @returns {Promise<ArrayBuffer>} */
  async bytes(rec) {
    const cache = await this.cache();
    const key = CACHE_KEY_BASE + rec.sha256;
    if (cache) {
      const hit = await cache.match(key);
      if (hit) {
        const data = await hit.arrayBuffer();
        if (await sha256Hex(data) === rec.sha256) {
          this.log.push({path: rec.path, from: 'cache', bytes: data.byteLength});
          return data;
        }
        await cache.delete(key);  // damaged in the cache: fetch it again
      }
    }
    const url = new URL(rec.path, this.base).href;
    let response;
    try {
      response = await this.fetch(url, {integrity: rec.integrity, cache: 'no-cache'});
    } catch (e) {
      // fetch() rejects on an integrity mismatch as on a network error: tell them apart, and name the file.
      let plain = null;
      try { plain = await this.fetch(url, {cache: 'no-store'}); } catch (e2) { /* a network error after all */ }
      if (plain && plain.ok) {
        const got = await plain.arrayBuffer();
        throw new IntegrityError(rec.path, `expected ${rec.integrity.slice(0, 27)}… (${rec.bytes} bytes), got `
          + `${(await sha384Sri(got)).slice(0, 27)}… (${got.byteLength} bytes)`);
      }
      throw new Error(`cannot fetch ${url}: ${e && e.message || e}`);
    }
    if (!response.ok) throw new Error(`cannot fetch ${url}: HTTP ${response.status}`);
    const data = await response.arrayBuffer();
    const digest = await sha256Hex(data);
    if (digest !== rec.sha256) {
      throw new IntegrityError(rec.path, `sha256 ${digest.slice(0, 16)}… differs from ${rec.sha256.slice(0, 16)}…`);
    }
    this.log.push({path: rec.path, from: 'network', bytes: data.byteLength});
    if (cache) await cache.put(key, new Response(data, {headers: {'Content-Type': 'application/octet-stream'}}));
    return data;
  }

  /** A blob: URL of a verified file (JS modules are imported from it, wasm fetched from it). */
  async blobUrl(rec, type) {
    const url = URL.createObjectURL(new Blob([await this.bytes(rec)], {type}));
    this.blobUrls.push(url);
    return url;
  }

  revoke() {
    for (const u of this.blobUrls) URL.revokeObjectURL(u);
    this.blobUrls = [];
  }
}

function mimeOf(name) {
  if (name.endsWith('.wasm')) return 'application/wasm';
  if (name.endsWith('.js') || name.endsWith('.mjs')) return 'text/javascript';
  if (name.endsWith('.json')) return 'application/json';
  return 'application/octet-stream';
}

/** Why this browser cannot run `c` on `target` (null: it can try). */
function cannotRun(c, target, caps, opts) {
  const missing = (c.required_features || []).filter((f) => !caps.features.includes(f));
  if (missing.length) return `browser lacks ${missing.join(', ')}`;
  if (c.runtime_options && c.runtime_options.cross_origin_isolated && !caps.crossOriginIsolated) {
    return `needs a cross-origin isolated page (COOP/COEP) for ${c.runtime_options.threads} wasm threads`;
  }
  if (target === 'webgpu' && caps.webgpu && caps.webgpu.isFallbackAdapter && !opts.allowSoftwareGpu) {
    return 'the WebGPU adapter is a software (fallback) adapter; pass allowSoftwareGpu: true to use it';
  }
  return null;
}

/** An input of its declared shape (dynamic dims = 1): its recipe constant (`value`) when it has one, else zeros. */
function filledInput(i, lib) {
  const dims = i.shape.map((d) => (typeof d === 'number' ? d : 1));
  const n = dims.reduce((a, b) => a * b, 1);
  const Typed = lib.TYPED[i.dtype];
  const data = new Typed(n);
  if (i.value !== undefined && i.value !== null) {
    const flat = [i.value].flat(Infinity);
    for (let k = 0; k < n; k++) {
      const v = flat[k % flat.length];
      data[k] = Typed === BigInt64Array || Typed === BigUint64Array ? BigInt(v) : Number(v);
    }
  }
  return {data, dims, dtype: i.dtype};
}

/** The warm-up inference: every input filled (constants as the recipe fixed them). */
function warmupFeeds(inputs, lib) {
  return Object.fromEntries(inputs.map((i) => [i.name, filledInput(i, lib)]));
}

function basename(path) {
  return path.split('/').pop();
}

/**
 * Load a model version from a registry and get it running in this browser.
 * @param {object} opts
 * @param {string} opts.registry        base URL of the registry (where index.json is)
 * @param {string} opts.name            model name
 * @param {string} [opts.alias]         e.g. 'stable' (give this or `version`)
 * @param {string} [opts.version]
 * @param {string[]} [opts.targets]     order to try (default ['webgpu', 'wasm', 'webgl'])
 * @param {boolean} [opts.allowSoftwareGpu]  accept a software (fallback) WebGPU adapter (default false)
 * @param {string} [opts.deviceClass]   the class of device this visitor has (a browser host's device_class):
 *                                      its own decision per target when the registry has one, else the default
 * @param {boolean} [opts.cache]        use the Cache API (default true)
 * @param {typeof fetch} [opts.fetch]
 * @returns {Promise<Model>}
 */
export async function loadModel(opts) {
  const t0 = now();
  const o = {targets: DEFAULT_TARGETS, allowSoftwareGpu: false, cache: true, fetch: globalThis.fetch.bind(globalThis),
             ...opts};
  if (!o.registry || !o.name) throw new Error('loadModel: give registry and name');
  if (!o.alias === !o.version) throw new Error('loadModel: give exactly one of alias or version');
  const base = new URL(o.registry.endsWith('/') ? o.registry : `${o.registry}/`, globalThis.location).href;
  const indexUrl = new URL('index.json', base).href;
  const res = await o.fetch(indexUrl, {cache: 'no-cache'});
  if (!res.ok) throw new Error(`cannot read ${indexUrl}: HTTP ${res.status}`);
  const index = await res.json();
  if (index.schema_version !== 2) throw new Error(`${indexUrl}: schema_version ${index.schema_version}, this loader reads 2`);
  const m = index.models[o.name];
  if (!m) throw new Error(`${indexUrl}: no model ${o.name} (has ${Object.keys(index.models).join(', ')})`);
  let version = o.version;
  if (o.alias) {
    if (!m.aliases[o.alias]) throw new Error(`${o.name}: no alias ${o.alias} (has ${Object.keys(m.aliases).join(', ') || 'none'})`);
    version = m.aliases[o.alias].version;
  }
  const v = m.versions[version];
  if (!v) throw new Error(`${o.name}: no version ${version}`);
  const tIndex = now();
  const caps = await probeCapabilities();
  const tProbe = now();

  const info = {name: o.name, version, alias: o.alias || null, registry: base, capabilities: caps, skipped: [],
                failed: [], timings: {index_ms: tIndex - t0, probe_ms: tProbe - tIndex}};
  const store = new FileStore(base, o.fetch, o.cache);
  for (const target of o.targets) {
    const byClass = v.targets[target] && v.targets[target].device_classes;
    const t = (o.deviceClass && byClass && byClass[o.deviceClass]) || v.targets[target];
    if (!t) { info.skipped.push({target, why: 'not a target of this version'}); continue; }
    if (t.status !== 'chosen') { info.skipped.push({target, why: `no candidate in the registry: ${t.reason}`}); continue; }
    for (const [rank, c] of t.fallbacks.entries()) {
      const who = {target, runtime: c.runtime, variant: c.variant, rank};
      const why = cannotRun(c, target, caps, o);
      if (why) { info.skipped.push({...who, why}); continue; }
      let adapter = null;
      let stage = 'download';
      const tStart = now();
      try {
        const urls = {};
        for (const f of c.runtime_files) urls[f.name] = await store.blobUrl(f, mimeOf(f.name));
        const lib = await import(urls['runtimes/adapter.js']);
        adapter = await import(urls[c.runtime_entry]);
        const files = [];
        for (const f of c.files) files.push({name: basename(f.path), data: await store.bytes(f)});
        const tFetched = now();
        stage = 'session';
        const runtime = {url: (name) => urls[name], lib};
        await adapter.load({files, target, threads: c.runtime_options.threads, runtime});
        const tSession = now();
        stage = 'warm-up';
        const out = await adapter.run(warmupFeeds(v.inputs, lib));
        const missing = v.outputs.map((x) => x.name).filter((n) => !(n in out));
        if (missing.length) throw new Error(`outputs ${missing.join(', ')} missing (got ${Object.keys(out)})`);
        const tWarm = now();
        Object.assign(info, {target, runtime: c.runtime, runtime_version: c.runtime_version, variant: c.variant,
                             rank, backend: c.backend, threads: c.runtime_options.threads,
                             reason: rank === 0 ? t.reason : `fallback #${rank} of ${target}: the better ones failed`,
                             ship_in: c.ship_in, measured: c.metrics, files: store.log});
        Object.assign(info.timings, {download_ms: tFetched - tStart, session_ms: tSession - tFetched,
                                     warmup_ms: tWarm - tSession, total_ms: tWarm - t0});
        return new Model(adapter, store, v, info, lib);
      } catch (e) {
        if (e instanceof IntegrityError) { store.revoke(); throw e; }  // never fall back past altered bytes
        info.failed.push({...who, stage, error: String(e && e.message || e)});
        if (adapter) { try { await adapter.release(); } catch (e2) { /* a half-made session */ } }
      }
    }
  }
  store.revoke();
  info.timings.total_ms = now() - t0;
  const tried = [...info.skipped.map((s) => `${s.target}${s.variant ? `/${s.runtime}/${s.variant}` : ''}: ${s.why}`),
                 ...info.failed.map((f) => `${f.target}/${f.runtime}/${f.variant}: ${f.stage}: ${f.error}`)];
  throw new NoCandidateError(`${o.name} ${version}: nothing this browser can run (${tried.join('; ')})`, info);
}

/** A loaded model: run it, read what was chosen and why, release it. */
export class Model {
  constructor(adapter, store, version, info, lib) {
    this.adapter = adapter;
    this.store = store;
    this.version = version;
    this.info = info;
    this.lib = lib;
    this.inputs = version.inputs;
    this.outputs = version.outputs;
  }

  /** @param {Object<string, {data: ArrayLike, dims: number[], dtype: string}>} feeds  the recipe's constant
   *  inputs (`value` in the index) may be left out: they are filled in as measured. */
  run(feeds) {
    const all = {...feeds};
    for (const i of this.inputs) if (!(i.name in all) && i.value !== undefined && i.value !== null) all[i.name] = filledInput(i, this.lib);
    return this.adapter.run(all);
  }

  /** The class names of an output (published with the model), or null. */
  async labels(output) {
    const o = this.outputs.find((x) => x.name === (output || this.outputs[0].name));
    if (!o || !o.labels) return null;
    return JSON.parse(new TextDecoder().decode(await this.store.bytes(o.labels)));
  }

  /** A file published beside the model (one of the recipe's `assets`, e.g. its tokenizer.json: the file the
   *  evaluation prepared its inputs with), checked against its sha256 like the model's files. */
  async asset(name) {
    const assets = this.version.assets || {};
    if (!(name in assets)) throw new Error(`no asset ${JSON.stringify(name)} (published: ${Object.keys(assets).join(', ') || 'none'})`);
    return this.store.bytes(assets[name]);
  }

  /** An image (ImageBitmap, HTMLImageElement, canvas, ...) as this model's input, as the recipe preprocessed it. */
  preprocess(image, input) {
    const spec = input ? this.inputs.find((i) => i.name === input) : this.inputs[0];
    return {[spec.name]: imageToTensor(image, spec)};
  }

  async release() {
    await this.adapter.release();
    this.store.revoke();
  }
}

function num(v) {
  if (typeof v === 'number') return v;
  const m = /^\s*([0-9.]+)\s*\/\s*([0-9.]+)\s*$/.exec(String(v));
  return m ? Number(m[1]) / Number(m[2]) : Number(v);
}

/**
 * An image as a float32 tensor for an input spec of the index ({shape, layout, preprocessing}), applying the
 * recorded preprocessing: resize the shorter side (`resize_shorter`), center crop (`center_crop`), `scale`,
 * then per-channel `mean`/`std`; layout NCHW or NHWC, batch 1.
 */
export function imageToTensor(image, spec) {
  const p = spec.preprocessing || {};
  const nchw = spec.layout !== 'NHWC';
  const [c, h, w] = nchw ? spec.shape.slice(1) : [spec.shape[3], spec.shape[1], spec.shape[2]];
  const iw = image.width || image.naturalWidth, ih = image.height || image.naturalHeight;
  const shorter = p.resize_shorter || Math.min(h, w);
  const k = shorter / Math.min(iw, ih);
  const rw = Math.round(iw * k), rh = Math.round(ih * k);
  const crop = p.center_crop || Math.min(h, w);
  const canvas = typeof OffscreenCanvas !== 'undefined' ? new OffscreenCanvas(w, h) : Object.assign(document.createElement('canvas'), {width: w, height: h});
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingQuality = 'high';
  // Draw the resized image so that its centered crop lands on the canvas.
  ctx.drawImage(image, -Math.round((rw - crop) / 2), -Math.round((rh - crop) / 2), rw, rh);
  const px = ctx.getImageData(0, 0, w, h).data;
  const scale = p.scale !== undefined ? num(p.scale) : 1 / 255;
  const mean = [].concat(p.mean ?? 0).map(num), std = [].concat(p.std ?? 1).map(num);
  const out = new Float32Array(c * h * w);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = (y * w + x) * 4;
      for (let ch = 0; ch < c; ch++) {
        // One channel: the luminance of the pixel (grayscale models).
        const raw = c === 1 ? 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2] : px[i + ch];
        const val = (raw * scale - mean[ch % mean.length]) / std[ch % std.length];
        out[nchw ? ch * h * w + y * w + x : (y * w + x) * c + ch] = val;
      }
    }
  }
  return {data: out, dims: nchw ? [1, c, h, w] : [1, h, w, c], dtype: 'float32'};
}
