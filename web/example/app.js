// The example app: classify a user-chosen photo with the demo MobileNet from the registry's `stable` alias.
// Query parameters: ?registry=/registry/&name=mobilenet_v2&alias=stable&software_gpu=1
import {loadModel} from '../loader/index.js';

const q = new URLSearchParams(location.search);
const opts = {registry: q.get('registry') || '/registry/', name: q.get('name') || 'mobilenet_v2',
              alias: q.get('alias') || 'stable'};
const $ = (id) => document.getElementById(id);
$('alias').textContent = opts.alias;
$('software-gpu').checked = q.get('software_gpu') === '1';

function row(table, cells, head = false) {
  const tr = document.createElement('tr');
  for (const c of cells) {
    const td = document.createElement(head ? 'th' : 'td');
    td.textContent = c;
    tr.appendChild(td);
  }
  table.appendChild(tr);
}

function softmax(logits) {
  const max = Math.max(...logits);
  const e = logits.map((x) => Math.exp(x - max));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

let model = null;
let labels = null;

async function load() {
  if (model) await model.release();
  $('status').textContent = 'loading the model…';
  try {
    model = await loadModel({...opts, allowSoftwareGpu: $('software-gpu').checked});
    labels = await model.labels();
  } catch (e) {
    $('status').textContent = `could not load the model: ${e.message}`;
    $('status').className = 'error';
    window.__example = {error: e.message, info: e.info};
    return;
  }
  const i = model.info;
  $('chosen').replaceChildren();
  for (const [k, v] of [['version', i.version], ['target', i.target], ['runtime', `${i.runtime} ${i.runtime_version || ''}`],
                        ['variant', i.variant], ['threads', i.threads], ['why', i.reason],
                        ['ship in', `${i.ship_in.mode}: ${i.ship_in.reason}`]]) row($('chosen'), [k, String(v)]);
  $('attempts').replaceChildren();
  for (const s of i.skipped) {
    const li = document.createElement('li');
    li.textContent = `skipped ${s.target}${s.variant ? ` ${s.runtime}/${s.variant}` : ''}: ${s.why}`;
    $('attempts').appendChild(li);
  }
  for (const f of i.failed) {
    const li = document.createElement('li');
    li.textContent = `failed ${f.target} ${f.runtime}/${f.variant} at ${f.stage}: ${f.error}`;
    $('attempts').appendChild(li);
  }
  $('timings').replaceChildren();
  for (const [k, v] of Object.entries(i.timings)) row($('timings'), [k, `${v.toFixed(1)} ms`]);
  $('status').textContent = `ready: ${i.runtime}/${i.variant} on ${i.target} — choose a photo`;
  window.__example = {ready: true, info: i};
}

async function classify(file) {
  const bitmap = await createImageBitmap(file);
  $('photo').src = URL.createObjectURL(file);
  const t0 = performance.now();
  const out = await model.run(model.preprocess(bitmap));
  const ms = performance.now() - t0;
  const probs = softmax([...out[model.outputs[0].name].data]);
  const top = probs.map((p, k) => [p, k]).sort((a, b) => b[0] - a[0]).slice(0, 5);
  $('top5').replaceChildren();
  row($('top5'), ['label', 'probability'], true);
  for (const [p, k] of top) row($('top5'), [labels ? labels[k] : `class ${k}`, `${(100 * p).toFixed(1)} %`]);
  $('status').textContent = `classified in ${ms.toFixed(1)} ms with ${model.info.runtime}/${model.info.variant} on ${model.info.target}`;
  window.__example = {...window.__example, top5: top.map(([p, k]) => ({index: k, label: labels && labels[k], p})), ms};
}

$('file').addEventListener('change', (e) => { if (e.target.files[0] && model) classify(e.target.files[0]); });
$('software-gpu').addEventListener('change', load);
load();
