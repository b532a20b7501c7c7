// Runtime-agnostic measuring page. Python calls window.startBench(cfg) and waits (with its own
// deadline) for the console message "[bench] done", then reads window.__bench.result.
// Python-side waiting means a page stuck in a synchronous loop becomes a timeout, not a hang.
// The runtime adapter (/runtimes/<runtime>.js) only knows how to probe/load/run/release.

const TYPED = {
  float32: Float32Array, float64: Float64Array, float16: Uint16Array,
  int8: Int8Array, uint8: Uint8Array, bool: Uint8Array,
  int16: Int16Array, uint16: Uint16Array, int32: Int32Array, uint32: Uint32Array,
  int64: BigInt64Array, uint64: BigUint64Array,
};

const state = {stage: 'idle', done: false, result: null};
window.__bench = state;

function setStage(stage, cfg) {
  state.stage = stage;
  // Python follows stages through the console so it can name the stage even if the page hangs.
  console.log(`[bench] stage ${stage}`);
  if (cfg && cfg.debugHangStage === stage) {
    for (;;) {}  // test hook: a synchronous hang, like a runaway wasm loop
  }
}

async function fetchBuffer(url) {
  const r = await fetch(url, {cache: 'no-store'});
  if (!r.ok) throw new Error(`GET ${url}: HTTP ${r.status}`);
  return r.arrayBuffer();
}

// Rows [start, start+count) of a stacked input, copied so each tensor owns its buffer.
function sliceRows(input, start, count) {
  const per = input.shape.slice(1).reduce((a, b) => a * b, 1);
  return {
    data: input.array.slice(start * per, (start + count) * per),
    dims: [count, ...input.shape.slice(1)],
    dtype: input.dtype,
  };
}

function feedsFor(inputs, start, count) {
  const feeds = {};
  for (const inp of inputs) feeds[inp.name] = sliceRows(inp, start, count);
  return feeds;
}

// Outputs go back base64-encoded: a JSON number array would be ~5x bigger and lossy.
function toBase64(typed) {
  const bytes = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function encodeOutputs(outputs) {
  const enc = {};
  for (const [name, t] of Object.entries(outputs)) enc[name] = {dtype: t.dtype, dims: t.dims, b64: toBase64(t.data)};
  return enc;
}

async function bench(cfg) {
  const res = {
    status: 'ok', error: null, download_bytes: 0, download_ms: 0, session_ms: 0, first_inference_ms: 0,
    latency_ms: [], eval_outputs: [],
    env: {userAgent: navigator.userAgent, crossOriginIsolated: self.crossOriginIsolated,
          hardwareConcurrency: navigator.hardwareConcurrency, backend: cfg.backend, runtime: cfg.runtime},
  };
  let adapter = null;
  try {
    setStage('import', cfg);
    if (!self.crossOriginIsolated) throw new Error('page is not cross-origin isolated (COOP/COEP headers missing)');
    adapter = await import(`/runtimes/${cfg.runtime}.js`);

    setStage('probe', cfg);
    const probe = await adapter.probe(cfg.backend);
    res.env.probe = probe;
    if (!probe.available) {
      return {...res, status: 'unsupported', error: `probe: backend ${cfg.backend} unavailable: ${probe.reason || ''}`};
    }
    const missing = (cfg.requiredFeatures || []).filter((f) => !probe.features.includes(f));
    if (missing.length) {
      return {...res, status: 'unsupported', error: `probe: ${cfg.backend} adapter lacks feature(s) ${missing.join(', ')}`};
    }

    setStage('inputs', cfg);
    const manifest = await (await fetch(cfg.jobBase + 'manifest.json', {cache: 'no-store'})).json();
    const inputs = [];
    for (const inp of manifest.inputs) {
      const Typed = TYPED[inp.dtype];
      if (!Typed) throw new Error(`unsupported input dtype ${inp.dtype} for ${inp.name}`);
      inputs.push({...inp, array: new Typed(await fetchBuffer(cfg.jobBase + inp.file))});
    }
    const n = manifest.num_samples;

    // Model files only: this is what a user would download.
    setStage('download', cfg);
    const files = [];
    let t0 = performance.now();
    for (const f of manifest.model_files) {
      const data = await fetchBuffer(cfg.jobBase + f.file);
      res.download_bytes += data.byteLength;
      files.push({name: f.name, data});
    }
    res.download_ms = performance.now() - t0;

    setStage('session', cfg);
    t0 = performance.now();
    const loaded = await adapter.load({files, backend: cfg.backend, threads: cfg.threads});
    res.session_ms = performance.now() - t0;
    res.env.session = loaded && loaded.info;
    files.length = 0;  // let the downloaded buffers be collected

    // First inference includes lazy work (kernel compilation, weight upload), so it is timed apart.
    setStage('first', cfg);
    const single = feedsFor(inputs, 0, 1);
    t0 = performance.now();
    await adapter.run(single);
    res.first_inference_ms = performance.now() - t0;

    setStage('eval', cfg);
    for (let i = 0; i < n; i += cfg.evalBatch) {
      const count = Math.min(cfg.evalBatch, n - i);
      res.eval_outputs.push(encodeOutputs(await adapter.run(feedsFor(inputs, i, count))));
    }

    setStage('warmup', cfg);
    for (let i = 0; i < cfg.warmup; i++) await adapter.run(single);

    setStage('timing', cfg);
    for (let i = 0; i < cfg.runs; i++) {
      t0 = performance.now();
      await adapter.run(single);
      res.latency_ms.push(performance.now() - t0);
    }
    return res;
  } catch (e) {
    const msg = (e && (e.message || String(e))) || 'unknown error';
    return {...res, status: 'failed', error: `${state.stage}: ${msg}`};
  } finally {
    if (adapter) {
      try { Object.assign(res.env, adapter.env ? adapter.env() : {}); } catch (e) { /* report what we have */ }
      try { await adapter.release(); } catch (e) { /* session may not exist */ }
    }
  }
}

window.startBench = (cfg) => {
  state.done = false;
  bench(cfg).then((result) => {
    state.result = result;
    state.stage = 'done';
    state.done = true;
    console.log('[bench] done');
  });
  return true;
};
window.__benchReady = true;
