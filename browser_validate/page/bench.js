// Runtime-agnostic measuring page. Python calls window.startBench(cfg) and waits (with its own
// deadline) for the console message "[bench] done", then reads window.__bench.result.
// Python-side waiting means a page stuck in a synchronous loop becomes a timeout, not a hang.
// The page knows targets; the runtime adapter (/runtimes/<runtime>.js, interface in adapter.js) only
// knows how to load/run/release on one, through its own backend.
//
// cfg (from harness.py): {runtime, target, threads, warmup, runs, evalBatch, feedback, sequenceLength, requiredFeatures, jobBase,
//                         debugHangStage, softwareGpu, correctnessSamples,
//                         qoe: {modes, durationMs, minMs, minInferences, enough: {fps, inputDelayMs} | null} | null}

import {TYPED, probeTarget, servedRuntime} from '/runtimes/adapter.js';

const state = {stage: 'idle', done: false, result: null};
window.__bench = state;

// A runtime's own log is where some facts only appear (onnxruntime: which nodes its GPU provider left to the CPU).
// The console is tapped before any runtime is imported (a wasm module binds console functions when it loads):
// `fellBack` notes onnxruntime's warning that nodes left the preferred provider; while `capture` is on (the
// placement stage) lines are kept here instead of reaching the console (a verbose log is no error of the model's).
const runtimeLog = {lines: [], capture: false, fellBack: false};
for (const level of ['log', 'info', 'warn', 'error', 'debug']) {
  const write = console[level].bind(console);
  console[level] = (...args) => {
    const text = args.map(String).join(' ');
    if (runtimeLog.capture) return void runtimeLog.lines.push(text);
    if (text.includes('not assigned to the preferred execution providers')) runtimeLog.fellBack = true;
    write(...args);
  };
}

// From onnxruntime's verbose log: nodes per execution provider ("Node(s) placed on [EP]. Number of nodes: n") and
// the nodes the GPU provider had no kernel for ("kernel not found in registries for Op type: X node name: Y",
// logged once per partitioning pass: counted once). {providers: {EP: n}, no_gpu_kernel: {OpType: n}, nodes: [20]}
export function parsePlacement(lines) {
  const providers = {};
  const missing = {};
  for (const line of lines) {
    const m = line.match(/(?:All nodes|Node\(s\)) placed on \[(\w+)\]\. Number of nodes: (\d+)/);
    if (m) providers[m[1]] = Number(m[2]);
    const k = line.match(/kernel not found in registries for Op type: (\S+) node name: (.*?)\s*$/);
    if (k) (missing[k[1]] ||= new Set()).add(k[2]);
  }
  return {providers, no_gpu_kernel: Object.fromEntries(Object.entries(missing).map(([op, n]) => [op, n.size])),
          nodes: Object.values(missing).flatMap((n) => [...n]).slice(0, 20)};
}

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
// Samples [start, start+count) of a stacked input ([N, ...one sample]), shaped as the model takes them: the
// count goes where the input's batch axis is (none: one sample, no batch axis). Only a first batch axis can hold
// several samples without moving data; the pipeline evaluates other models one sample at a time.
// Samples of different sizes are stored padded, with each one's real shape in `input.extents`: they are cut out
// to it (a batch's samples share it: manifest.eval_batches).
function sliceRows(input, start, count) {
  const padded = input.shape.slice(1);
  const per = padded.reduce((a, b) => a * b, 1);
  const sample = input.extents ? input.extents[start] : padded;
  const axis = input.batch_axis === undefined ? 0 : input.batch_axis;
  if (axis !== 0 && count !== 1) throw new Error(`input ${input.name}: batch axis ${axis} takes one sample at a time`);
  const dims = axis === null ? sample : [...sample.slice(0, axis), count, ...sample.slice(axis)];
  if (!input.extents) return {data: input.array.slice(start * per, (start + count) * per), dims, dtype: input.dtype};
  const size = sample.reduce((a, b) => a * b, 1);
  const data = new input.array.constructor(size * count);
  for (let k = 0; k < count; k++) cutOut(input.array, (start + k) * per, padded, sample, data, k * size);
  return {data, dims, dtype: input.dtype};
}

// Copy the leading `sample`-shaped block of a `padded`-shaped array at `from` into `out` at `to` (row by row).
function cutOut(src, from, padded, sample, out, to) {
  const rank = padded.length;
  if (rank === 0) { out[to] = src[from]; return; }
  const row = sample[rank - 1];
  const rows = sample.slice(0, -1).reduce((a, b) => a * b, 1);
  const strides = padded.map((_, d) => padded.slice(d + 1).reduce((a, b) => a * b, 1));
  for (let r = 0; r < rows; r++) {
    let rem = r, offset = 0;
    for (let d = rank - 2; d >= 0; d--) { offset += (rem % sample[d]) * strides[d]; rem = Math.floor(rem / sample[d]); }
    out.set(src.subarray(from + offset, from + offset + row), to + r * row);
  }
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

// ---------------------------------------------------------------- user-experience probes
// While inference runs continuously (on the main thread, or in a Web Worker), watch what a user
// would feel: frames (requestAnimationFrame gaps), event-loop lag (a 50 ms timer's lateness) and
// input delay (Python clicks the page; the handler sees how late the event is processed).

const FRAME_MS = 1000 / 60;
const inputDelays = [];
addEventListener('pointerdown', (e) => inputDelays.push(performance.now() - e.timeStamp), {capture: true});

function percentile(a, p) {
  if (!a.length) return null;
  const s = [...a].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.floor(p / 100 * s.length))];
}

function startWatch() {
  const w = {frames: [], lags: [], stop: false, t0: performance.now()};
  inputDelays.length = 0;
  const frame = (t) => { w.frames.push(t); if (!w.stop) requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
  let expected = performance.now() + 50;
  const tick = () => {
    const now = performance.now();
    w.lags.push(Math.max(0, now - expected));
    expected = now + 50;
    if (!w.stop) setTimeout(tick, 50);
  };
  setTimeout(tick, 50);
  return w;
}

function stopWatch(w, runs) {
  w.stop = true;
  const end = performance.now();
  const elapsed = end - w.t0;
  // The window's start and end bound the first and last gaps: a page frozen for the whole window
  // has no frames at all, and that is one long gap, not zero dropped frames.
  const marks = [w.t0, ...w.frames, end];
  const gaps = marks.slice(1).map((t, i) => t - marks[i]);
  const dropped = gaps.reduce((n, g) => n + Math.max(0, Math.round(g / FRAME_MS) - 1), 0);
  return {
    duration_ms: elapsed, inferences: runs,
    fps: w.frames.length / (elapsed / 1000), dropped_frames: dropped,
    longest_frame_ms: Math.max(...gaps),
    event_loop_lag_ms: {median: percentile(w.lags, 50), p95: percentile(w.lags, 95), max: w.lags.length ? Math.max(...w.lags) : null},
    input_delay_ms: {n: inputDelays.length, median: percentile(inputDelays, 50), p95: percentile(inputDelays, 95),
                     max: inputDelays.length ? Math.max(...inputDelays) : null},
  };
}

async function qoeMainThread(adapter, single, durationMs) {
  const w = startWatch();
  let runs = 0;
  const end = performance.now() + durationMs;
  // One inference per macrotask, as an app would schedule them: between inferences the browser may
  // paint and handle input, so what is measured is how long each inference blocks the main thread.
  while (runs === 0 || performance.now() < end) {
    await adapter.run(single);
    runs++;
    await new Promise((r) => setTimeout(r, 0));
  }
  // Let the last frame and timer land so they are counted.
  await new Promise((r) => setTimeout(r, 60));
  return stopWatch(w, runs);
}

async function qoeWorker(cfg, files, single, durationMs) {
  const worker = new Worker('/page/worker.js', {type: 'module'});
  const call = (msg, transfer = []) => new Promise((resolve, reject) => {
    worker.onmessage = (e) => (e.data.error ? reject(new Error(`worker: ${e.data.error}`)) : resolve(e.data));
    worker.onerror = (e) => reject(new Error(`worker: ${e.message || 'error'}`));
    worker.postMessage(msg, transfer);
  });
  try {
    await call({op: 'load', runtime: cfg.runtime, target: cfg.target, threads: cfg.threads, files});
    await call({op: 'run', feeds: single});  // first inference outside the window, like the main-thread mode
    const w = startWatch();
    const done = await call({op: 'loop', feeds: single, durationMs});
    await new Promise((r) => setTimeout(r, 60));
    return stopWatch(w, done.runs);
  } finally {
    worker.terminate();
  }
}

// How long each user-experience mode is probed: minInferences inferences at the measured median latency, at least
// minMs (frames and clicks to count), at most durationMs (the recipe's qoe_duration_ms).
export function qoeWindowMs(latencies, qoe) {
  const median = percentile(latencies, 50) || 0;
  return Math.min(qoe.durationMs, Math.max(qoe.minMs || 0, (qoe.minInferences || 0) * median));
}

function isSoftwareGpu(target, info) {
  if (!info || target === 'wasm') return false;
  const text = [info.architecture, info.description, info.renderer, info.vendor].join(' ').toLowerCase();
  return Boolean(info.isFallbackAdapter) || /swiftshader|llvmpipe|softpipe|software/.test(text);
}

async function bench(cfg) {
  const res = {
    status: 'ok', error: null, download_bytes: 0, download_ms: 0, session_ms: 0, first_inference_ms: 0,
    latency_ms: [], eval_outputs: [],
    env: {userAgent: navigator.userAgent, crossOriginIsolated: self.crossOriginIsolated,
          hardwareConcurrency: navigator.hardwareConcurrency, target: cfg.target, runtime: cfg.runtime},
  };
  let adapter = null;
  try {
    setStage('import', cfg);
    if (!self.crossOriginIsolated) throw new Error('page is not cross-origin isolated (COOP/COEP headers missing)');
    adapter = await import(`/runtimes/${cfg.runtime}.js`);

    setStage('probe', cfg);
    const probe = await probeTarget(cfg.target);
    res.env.probe = probe;
    if (!probe.available) {
      return {...res, status: 'unsupported', error: `probe: target ${cfg.target} unavailable: ${probe.reason || ''}`};
    }
    // A software GPU (SwiftShader) says nothing of a GPU's speed: there, unless asked for timings, measure what
    // a correctness check needs (outputs, one timed run, no user-experience probe) and say so.
    // The one place that decides what is a software GPU: Python reads this verdict for the device record.
    res.env.software_gpu = cfg.target === 'wasm' ? null : isSoftwareGpu(cfg.target, probe.info);
    // ... and its outputs on a few samples are what a correctness check needs (each sample can take seconds there).
    if (cfg.softwareGpu === 'correctness' && res.env.software_gpu) {
      cfg = {...cfg, warmup: 0, runs: 1, qoe: null};
      res.env.correctness_only = `software GPU adapter: outputs checked on the first ${cfg.correctnessSamples} ` +
        'evaluation samples, one timed run, no user-experience probe';
    }
    const missing = (cfg.requiredFeatures || []).filter((f) => !probe.features.includes(f));
    if (missing.length) {
      return {...res, status: 'unsupported', error: `probe: ${cfg.target} adapter lacks feature(s) ${missing.join(', ')}`};
    }

    setStage('inputs', cfg);
    const manifest = await (await fetch(cfg.jobBase + 'manifest.json', {cache: 'no-store'})).json();
    const inputs = [];
    for (const inp of manifest.inputs) {
      const Typed = TYPED[inp.dtype];
      if (!Typed) throw new Error(`unsupported input dtype ${inp.dtype} for ${inp.name}`);
      inputs.push({...inp, array: new Typed(await fetchBuffer(cfg.jobBase + inp.file))});
    }
    let n = manifest.num_samples;
    if (res.env.correctness_only && cfg.correctnessSamples < n) {
      // Whole sequences for a stateful model: the state must start where the data's sequences start.
      const seq = cfg.feedback ? cfg.sequenceLength : 1;
      n = Math.min(n, Math.ceil(cfg.correctnessSamples / seq) * seq);
    }
    res.env.evaluated_samples = n;
    lastJob = {manifest, base: cfg.jobBase};

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
    // 0 threads: as many as the visitor's machine has cores (what an app passing hardwareConcurrency gets).
    const threads = cfg.threads > 0 ? cfg.threads : (navigator.hardwareConcurrency || 1);
    res.env.threads = threads;
    cfg = {...cfg, threads};  // the QoE worker loads with the same count
    const loaded = await adapter.load({files, target: cfg.target, threads, runtime: servedRuntime()});
    res.session_ms = performance.now() - t0;
    res.env.session = loaded && loaded.info;
    // Keep the model bytes only if a Worker will need them; otherwise let them be collected.
    const workerFiles = cfg.qoe && cfg.qoe.modes.includes('worker') ? files.map((f) => ({...f})) : null;
    // ... or the placement stage, when the runtime said while loading that nodes left the GPU.
    const placementFiles = runtimeLog.fellBack && cfg.target !== 'wasm' && adapter.placement
      ? files.map((f) => ({...f})) : null;
    files.length = 0;

    // First inference includes lazy work (kernel compilation, weight upload), so it is timed apart.
    setStage('first', cfg);
    const single = feedsFor(inputs, 0, 1);
    t0 = performance.now();
    await adapter.run(single);
    res.first_inference_ms = performance.now() - t0;

    setStage('eval', cfg);
    if (cfg.feedback) {
      // A stateful model over sequences, one step at a time: after a sequence's first step each fed-back input
      // is the previous step's output (as the app would run it), not the data's value.
      let prev = null;
      for (let i = 0; i < n; i++) {
        const feeds = feedsFor(inputs, i, 1);
        if (i % cfg.sequenceLength !== 0) {
          for (const [out, inp] of Object.entries(cfg.feedback)) feeds[inp] = {...prev[out], dims: feeds[inp].dims};
        }
        prev = await adapter.run(feeds);
        res.eval_outputs.push(encodeOutputs(prev));
      }
    } else {
      let plan = manifest.eval_batches || [];
      if (!manifest.eval_batches) for (let i = 0; i < n; i += cfg.evalBatch) plan.push([i, Math.min(cfg.evalBatch, n - i)]);
      plan = plan.filter(([i]) => i < n).map(([i, count]) => [i, Math.min(count, n - i)]);
      for (const [i, count] of plan) res.eval_outputs.push(encodeOutputs(await adapter.run(feedsFor(inputs, i, count))));
    }

    setStage('warmup', cfg);
    for (let i = 0; i < cfg.warmup; i++) await adapter.run(single);

    setStage('timing', cfg);
    for (let i = 0; i < cfg.runs; i++) {
      t0 = performance.now();
      await adapter.run(single);
      res.latency_ms.push(performance.now() - t0);
    }

    // The page's own memory view (JS + wasm heaps). It can stall for a long time with wasm threads:
    // bounded, and absent rather than wrong when it does not answer. With more than one thread it did not answer
    // in 19 of 22 measurements (5 s each), so it is not asked then.
    setStage('memory', cfg);
    if (cfg.threads > 1) {
      res.env.page_memory = 'not asked: measureUserAgentSpecificMemory stalls with wasm threads';
    } else if (self.performance.measureUserAgentSpecificMemory) {
      const timeout = new Promise((resolve) => setTimeout(() => resolve(null), 5000));
      const m = await Promise.race([performance.measureUserAgentSpecificMemory().catch(() => null), timeout]);
      res.page_memory_bytes = m ? m.bytes : null;
    }

    if (cfg.qoe) {
      res.qoe = {};
      const windowMs = qoeWindowMs(res.latency_ms, cfg.qoe);
      for (const mode of cfg.qoe.modes) {
        const main = res.qoe.main;
        if (mode === 'worker' && main && main.responsive === true) {
          // Shipping decides between the two only when the main thread does not stay responsive.
          res.env.qoe_skipped = `worker: the main thread stayed responsive (${main.fps.toFixed(0)} fps)`;
          continue;
        }
        setStage(`qoe-${mode}`, cfg);
        try {
          res.qoe[mode] = mode === 'main'
            ? await qoeMainThread(adapter, single, windowMs)
            : await qoeWorker(cfg, workerFiles, single, windowMs);
          const verdict = isResponsive(res.qoe[mode], cfg.qoe.enough);
          if (verdict !== undefined) res.qoe[mode].responsive = verdict;
        } catch (e) {
          res.qoe[mode] = {error: (e && (e.message || String(e))) || 'failed'};
        }
      }
      setStage('qoe-done', cfg);
    }

    // Which nodes the GPU provider left to the CPU, when the runtime said some did (after all timing: a second
    // session, logging verbosely).
    if (placementFiles) {
      setStage('placement', cfg);
      runtimeLog.lines = [];
      runtimeLog.capture = true;
      try {
        await adapter.placement({files: placementFiles, target: cfg.target, threads, runtime: servedRuntime()});
        res.env.placement = parsePlacement(runtimeLog.lines);
      } catch (e) {
        res.env.placement = {error: (e && (e.message || String(e))) || 'failed'};
      } finally {
        runtimeLog.capture = false;
        runtimeLog.lines = [];
      }
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

// The one rule for "stays responsive" while inferring continuously: frames at or above `enough.fps` and the p95
// delay of synthetic clicks at or below `enough.inputDelayMs` (thresholds from Python: metrics.SMOOTH_FPS and
// INPUT_DELAY_OK_MS). The page judges each mode it probed (the worker is probed only when the main thread is not
// responsive); Python's ship_mode reads the verdicts. No thresholds or a failed probe: no verdict.
function isResponsive(q, enough) {
  if (!enough || !q || q.error) return undefined;
  const p95 = q.input_delay_ms ? q.input_delay_ms.p95 : null;
  return q.fps >= enough.fps && (p95 == null || p95 <= enough.inputDelayMs);
}

// Re-download the model files (used under an emulated network profile) and return the time taken.
let lastJob = null;
window.timeDownload = async () => {
  const t0 = performance.now();
  for (const f of lastJob.manifest.model_files) await fetchBuffer(lastJob.base + f.file);
  return performance.now() - t0;
};

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
