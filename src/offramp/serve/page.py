"""The playground page at ``/``: one self-contained HTML document (no external assets, no build step).

A text box (two for pair tasks), a speed slider, the predicted label with probability bars, and the
layer stack with the exits marked, the layers the input ran filled in and the exit it left at
highlighted; ``/?q=TEXT`` fills the box and predicts at once. The slider sets a target speed-up
(``parameters.speedup``) once the server holds a window of recent inputs' exit signals; before that it
sets the max-prob confidence an exit needs.
"""

from __future__ import annotations

import html

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>offramp · __NAME__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:15px/1.45 system-ui,sans-serif;max-width:760px;margin:24px auto;padding:0 16px;color:#1d232a}
 h1{font-size:20px;margin:0 0 4px} .sub{color:#5b6672;margin:0 0 16px}
 textarea{width:100%;box-sizing:border-box;font:inherit;padding:8px;border:1px solid #b8c2cc;
 border-radius:6px}
 .row{display:flex;gap:12px;align-items:center;margin:10px 0} .row label{min-width:150px}
 input[type=range]{flex:1} button{font:inherit;padding:6px 16px;border-radius:6px;border:0;background:#2563eb;
 color:#fff;cursor:pointer}
 .card{border:1px solid #dde3ea;border-radius:8px;padding:12px 14px;margin-top:14px}
 .label{font-size:22px;font-weight:600} .bar{height:14px;background:#2563eb;border-radius:3px}
 .prob{display:grid;grid-template-columns:110px 1fr 60px;gap:8px;align-items:center;margin:4px 0}
 .stack{display:flex;flex-direction:column-reverse;gap:3px;margin-top:8px}
 .layer{display:flex;align-items:center;gap:8px;height:24px}
 .box{width:220px;height:22px;border-radius:4px;border:1px solid #b8c2cc;background:#f4f6f8;font-size:12px;
 display:flex;align-items:center;padding-left:8px;box-sizing:border-box}
 .ran{background:#bfdbfe;border-color:#60a5fa} .exitat{background:#2563eb;color:#fff;border-color:#1d4ed8}
 .tag{font-size:12px;color:#5b6672} .err{color:#b91c1c}
 code{background:#f4f6f8;padding:1px 4px;border-radius:3px}
</style></head><body>
<h1>offramp playground</h1>
<p class="sub">model <code>__NAME__</code> · early exit: easy inputs leave after a few layers</p>
<textarea id="text" rows="3">a gripping, funny and moving film</textarea>
<textarea id="pair" rows="2" style="display:none;margin-top:6px" placeholder="second sentence"></textarea>
<div class="row"><label id="knob-label">speed</label><input id="knob" type="range">
<span id="knob-value"></span></div>
<div class="row"><button id="go">Predict</button><span id="status" class="tag"></span></div>
<div id="out" class="card" style="display:none"><div class="label" id="label"></div>
<div id="probs"></div><div class="tag" id="cost"></div><div class="stack" id="stack"></div></div>
<script>
const NAME = "__NAME__";
let meta = null, mode = "threshold";
const $ = id => document.getElementById(id);
async function init() {
  meta = (await (await fetch(`/v2/models/${NAME}`)).json()).parameters;
  const state = await (await fetch(`/v2/models/${NAME}/policy`)).json();
  if (meta.pair) $("pair").style.display = "block";
  const k = $("knob");
  if (state.window_rows >= state.min_window) {
    mode = "speedup"; k.min = 1; k.max = 4; k.step = 0.1; k.value = 2;
    $("knob-label").textContent = "target speed-up";
  } else {
    k.min = 0.5; k.max = 1; k.step = 0.01; k.value = 0.9;
    $("knob-label").textContent = "confidence to exit";
  }
  k.oninput = () => { $("knob-value").textContent = mode === "speedup" ? `${(+k.value).toFixed(1)}×`
    : (+k.value).toFixed(2); };
  k.onchange = predict; k.oninput(); drawStack(null);
  const q = new URLSearchParams(location.search).get("q");  // /?q=text predicts at once (shareable links)
  if (q) { $("text").value = q; predict(); }
}
function drawStack(r) {
  const s = $("stack"); s.innerHTML = "";
  for (let l = 1; l <= meta.depth; l++) {
    const row = document.createElement("div"); row.className = "layer";
    const box = document.createElement("div"); box.className = "box"; box.textContent = `layer ${l}`;
    if (r && l <= r.exit_layer) box.classList.add("ran");
    if (r && l === r.exit_layer) { box.classList.add("exitat"); box.textContent += "  ← exit"; }
    const tag = document.createElement("span"); tag.className = "tag";
    tag.textContent = meta.exits.includes(l) ? "exit head" : "";
    row.append(box, tag); s.append(row);
  }
}
async function predict() {
  const text = $("text").value, k = +$("knob").value;
  const input = meta.pair ? [text, $("pair").value] : text;
  const parameters = mode === "speedup" ? {speedup: k} : {policy: "maxprob", threshold: k};
  $("status").textContent = "…";
  const t0 = performance.now();
  const res = await fetch("/predict", {method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify({inputs: input, parameters})});
  const body = await res.json();
  if (!res.ok) { $("status").innerHTML = `<span class="err">${res.status}: ${body.error}</span>`; return; }
  $("status").textContent = `${(performance.now() - t0).toFixed(0)} ms`;
  const r = body.predictions[0]; $("out").style.display = "block";
  $("label").textContent = r.label;
  $("probs").innerHTML = Object.entries(r.probabilities).map(([n, p]) =>
    `<div class="prob"><span>${n}</span><div class="bar" style="width:${(100 * p).toFixed(1)}%"></div>` +
    `<span>${p.toFixed(3)}</span></div>`).join("");
  const shadow = !meta.cascade && r.layers_run > r.exit_layer
    ? " (sampled for speed control: ran every exit)" : "";
  $("cost").textContent =
    `exited after layer ${r.exit_layer} of ${meta.depth} · ran ${r.layers_run} layers${shadow}`;
  drawStack(r);
}
$("go").onclick = predict; init();
</script></body></html>
"""


def playground_html(name: str) -> str:
    """The page for the model served under ``name`` (escaped; names are validated anyway)."""
    return _PAGE.replace("__NAME__", html.escape(name, quote=True))
