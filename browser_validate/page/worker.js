// Runs a runtime adapter inside a Web Worker, for the "inference off the main thread" measurement.
// Messages: {op:'load', runtime, target, threads, files} | {op:'run', feeds} | {op:'loop', feeds, durationMs}.
import * as lib from '/runtimes/adapter.js';

let adapter = null;

self.onmessage = async (e) => {
  const m = e.data;
  try {
    if (m.op === 'load') {
      adapter = await import(`/runtimes/${m.runtime}.js`);
      await adapter.load({files: m.files, target: m.target, threads: m.threads, runtime: lib.servedRuntime()});
      self.postMessage({ok: true});
    } else if (m.op === 'run') {
      await adapter.run(m.feeds);
      self.postMessage({ok: true});
    } else if (m.op === 'loop') {
      let runs = 0;
      const end = performance.now() + m.durationMs;
      while (runs === 0 || performance.now() < end) { await adapter.run(m.feeds); runs++; }
      await adapter.release();
      self.postMessage({ok: true, runs});
    }
  } catch (err) {
    self.postMessage({error: (err && (err.message || String(err))) || 'failed'});
  }
};
